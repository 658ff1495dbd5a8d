"""`splitwatch demo` (the README's first command): the tour runs end to end and accounts for every event."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from splitwatch.service.local.processes import splitwatch_command


def _lake_controls(out: Path) -> list[dict]:
    """Return the control events in the demo's lake."""
    import duckdb

    rows = duckdb.connect().execute(
        "SELECT experiment, ts, evidence FROM read_parquet(?, union_by_name = true) WHERE type = 'control'",
        [str(out / "lake" / "date=*" / "experiment=*" / "*.parquet")]).fetchall()
    return [{"experiment": e, "ts": ts.isoformat(), "evidence": json.loads(ev) if ev else None} for e, ts, ev in rows]


def events_read(out: Path) -> list[str]:
    """Return the event ids in the demo's lake."""
    import duckdb

    return [r[0] for r in duckdb.connect().execute(
        "SELECT event_id FROM read_parquet(?, union_by_name = true)",
        [str(out / "lake" / "date=*" / "experiment=*" / "*.parquet")]).fetchall()]


def test_the_demo_tours_the_product_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = subprocess.run(splitwatch_command("demo", "--units", "400", "--workdir", str(out)),
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    # issue 25, finding 8: at 80 columns nothing is cut, and every line fits but the commands to paste,
    # which are never folded (a terminal wraps them on screen; a copy is one line)
    assert "…" not in text, text
    wide = [line for line in text.splitlines() if len(line) > 80 and not re.match(r"  (\S*splitwatch|\()", line)]
    assert not wide, wide
    m = re.search(r"(\d+) events of support-ft read back from Kafka \((\d+) requests, (\d+) outcomes",
                  " ".join(text.split()))
    assert m, text
    events, requests, outcomes = map(int, m.groups())
    assert requests >= 400 and outcomes == 3 * requests  # resolved, escalated, csat per conversation
    assert events == 2 * requests + outcomes  # one exposure and one response per request
    rows = re.findall(r"^\| (base|finetuned) \| (\d+) \| (\d+) \|", text, re.M)  # counts as integers
    assert {r[0] for r in rows} == {"base", "finetuned"}
    assert sum(int(r[1]) for r in rows) == 400 and sum(int(r[2]) for r in rows) == requests
    assert "e+0" not in text  # never 1e+03
    # the truth is printed on the report's definitions
    truth = dict(re.findall(r"^\| (base|finetuned) \| (0\.\d+) \| 0\.3", text, re.M))
    # per user, at least once in 1-3 conversations at 0.30 (0.36) each: 1 - mean(0.7^k) = 0.489
    assert truth == {"base": "0.489", "finetuned": "0.563"}, truth
    # issue 30: the primary by the language of each user's first prompt, and day-1 retention (today's users
    # censored and counted; the replayed cohort's returns measured)
    flat_text = " ".join(text.split())
    assert re.search(r"resolved for finetuned, language en \(\d+ / \d+ users\)", flat_text), text
    assert re.search(r"resolved for finetuned, language es \(\d+ / \d+ users\)", flat_text), text
    assert "Day-1 retention: today's 400 users cannot have come back yet" in flat_text
    cohort = re.search(r"The cohort replayed from (\S+) \(600 users, 3 days ago\): base (\d+\.\d)%, finetuned "
                       r"(\d+\.\d)% came back the next day", flat_text)
    assert cohort, text
    assert re.search(rf"report --config \S+ --experiment support-ft --from {cohort.group(1)} --to ", text)
    report_md = (out / "report.md").read_text()
    for section in ("## Primary metrics", "## Secondary metrics", "## Guardrails", "## Diagnostics",
                    "## Drift timeline", "## Metric definitions"):
        assert section in report_md
    # the screen shows the report's verdict in the report's words, and every metric's result
    decision = json.loads((out / "report.json").read_text())["verdict"]
    assert f"Verdict on support-ft: {decision['headline']}." in text
    for metric in ("resolved", "csat", "escalated", "latency_p95_ms", "error_rate", "cost_per_request"):
        assert re.search(rf"^{metric} +(primary|secondary|guardrail|diagnostic) ", text, re.M), metric
    assert "wall-clock time on this machine" in text  # why the latency guardrail can differ between runs
    # issue 26: the offline eval's slices, and whether the fine-tune's gain holds out of domain
    flat = " ".join(text.split())
    # issue 27: the training runs' report comes first, each run's finding at its step
    assert flat.index("Training runs before the checkpoint was chosen (3 runs") < flat.index("Offline eval before")
    assert "full-ft: over-fits from step 600" in flat and "lora-r16: training loss converged" in flat
    assert "full-ft-lr3e-4: diverged: the loss is NaN or infinite from step 700" in flat
    runs = json.loads((out / "training" / "report.json").read_text())["runs"]
    assert {r["name"]: r["overfitting_from"] for r in runs}["full-ft"] == 600
    assert "per slice of the test set (accuracy, each candidate minus base; Benjamini-Hochberg" in flat
    for part in ("split=out_of_domain (60 cases), finetuned:", "split=in_domain (160 cases), finetuned:",
                 "domain=billing (88 cases), finetuned:", "finetuned against base on accuracy:"):
        assert part in flat, part
    eval_json = json.loads((out / "eval" / "report.json").read_text())
    assert {s["key"] for s in eval_json["slices"]} == {"domain", "split"} and eval_json["generalisation"]

    # drift: noticed after the prompt mix shifted, never before
    d = re.search(r"shifted at exposure (\d+) of (\d+); .* noticed at exposure (\d+): (.+); "
                  r"(\d+) alarms before the shift", " ".join(text.split()))  # prose is folded to the width
    assert d, text
    shift, total, noticed, features, alarms = d.groups()
    assert int(shift) <= int(noticed) < int(total) and int(alarms) == 0
    # named in words: which language came, at the first alarm or, when that window had only begun to fill
    # with the shift, from a later one
    later = re.search(r"the language was named from exposure (\d+): (language: [^;]*?es 0% → \d+%)",
                      " ".join(text.split()))
    assert re.search(r"language: .*\bes 0% → \d+%", features) or (later and int(later.group(1)) > int(noticed)), text
    # rollback: the guard paused the failing candidate's experiment by itself, and the screen's counts
    # are the guard's own (its control event) and the users', each named for what it counts
    r = re.search(r"the guard paused support-ft-v2 (\d+) s after its users began", " ".join(text.split()))
    assert r, text
    g = re.search(r"The guard's evidence \(response events it had read when it acted\): finetuned-v2 failed "
                  r"(\d+) of (\d+) requests, base (\d+) of (\d+)", " ".join(text.split()))
    assert g, text
    control = [e for e in _lake_controls(out) if e["experiment"] == "support-ft-v2"]
    assert len(control) == 1
    t, c = control[0]["evidence"]["treatment"], control[0]["evidence"]["control"]
    assert tuple(map(int, g.groups())) == (t["failures"], t["requests"], c["failures"], c["requests"])
    v2 = json.loads(subprocess.run(splitwatch_command(
        "report", "--config", str(out / "splitwatch.yaml"), "--experiment", "support-ft-v2", "--from",
        control[0]["ts"][:10], "--format", "json"), capture_output=True, text=True, timeout=300).stdout)
    assert v2["verdict"]["decision"] == "roll_back" and v2["verdict"]["state"]["evidence"]["treatment"] == t
    lake = re.search(r"The lake holds ([\d,]+) events", " ".join(text.split()))
    # the lake holds every event read back from Kafka, and the drift events sent after (never "0 events")
    assert lake and int(lake.group(1).replace(",", "")) == len(set(events_read(out))) >= events > 0
    m_all = re.search(r"; (\d+) events in all\)", " ".join(text.split()))
    assert m_all and len(set(events_read(out))) >= int(m_all.group(1))
    print(f"\ndrift noticed {int(noticed) - int(shift)} exposures after the shift; rollback after {r.group(1)} s "
          f"on {t['failures']} of {t['requests']} failed requests")

    # the offline eval before users: the fine-tuned stub (88% right) found better than the base (72%)
    ev = json.loads((out / "eval" / "report.json").read_text())
    verdicts = {c["metric"]: c["verdict"] for c in ev["comparisons"]}
    assert ev["cases"] == 220 and verdicts["accuracy"] == "better", verdicts
    flat = " ".join(text.split())  # prose is folded to the width
    assert re.search(r"Offline eval before users \(220 support messages.*base accuracy \d", flat), text
    assert "finetuned against base: better on" in flat

    # the kept output directory: the reports, the config, the lake, the logs
    report = json.loads((out / "report.json").read_text())
    assert report["experiment"] == "support-ft" and report["drift"] and report["verdict"]["decision"]
    assert set(report["segments"]["units"]["language"]) == {"en", "es"}
    assert report["skipped_metrics"]["retention_d1"].startswith("every user's window ends after the data")
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "report.md").read_text().startswith("# splitwatch report: support-ft")
    assert (out / "splitwatch.yaml").exists() and any((out / "lake").rglob("*.parquet"))
    # the next commands are printed whole, one a line, with a path that exists from here
    nxt = re.search(r"^  (\S*splitwatch) report --config (\S+) --experiment support-ft-v2 --from \S+$", text, re.M)
    assert nxt, text[-3000:]
    assert Path(nxt.group(2)).exists() and Path(nxt.group(1)).name == "splitwatch"
    # no child process survives the demo
    for name, pid in json.loads((out / "logs" / "processes.json").read_text()).items():
        status = Path(f"/proc/{pid}/status")
        alive = status.exists() and "\nState:\tZ" not in status.read_text()
        assert not alive, f"{name} (pid {pid}) still runs"

    # issue 25, finding 6: a second run in the same directory works, and only then is the first deleted
    again = subprocess.run(splitwatch_command("demo", "--units", "120", "--workdir", str(out)),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert not (out / "previous").exists()
    assert json.loads((out / "report.json").read_text())["units"] != report["units"]  # the new run's report


def test_a_new_run_moves_the_earlier_one_aside_and_deletes_it_only_after(tmp_path: Path) -> None:
    from splitwatch.service.local import demo

    (tmp_path / "lake" / "date=x").mkdir(parents=True)
    (tmp_path / "lake" / "date=x" / "a.parquet").write_bytes(b"old lake")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "run.json").write_text("{}")
    (tmp_path / "report.md").write_text("# old report")
    (tmp_path / "notes.txt").write_text("mine")  # not the demo's: left alone
    demo._prepare_output(tmp_path)
    previous = tmp_path / "previous"
    assert (previous / "lake" / "date=x" / "a.parquet").read_bytes() == b"old lake"
    assert (previous / "eval" / "run.json").exists() and (previous / "report.md").read_text() == "# old report"
    assert not (tmp_path / "lake").exists() and not (tmp_path / "eval").exists()
    assert (tmp_path / "logs").is_dir() and (tmp_path / "notes.txt").read_text() == "mine"
    demo._drop_previous(tmp_path)
    assert not previous.exists() and (tmp_path / "notes.txt").exists()


def test_the_progress_display_fits_80_columns() -> None:
    # issue 25, finding 8: at 80 columns no step's line is cut ("━━━ 6… 0:0…")
    import io

    from rich.console import Console

    from splitwatch.service.local import demo

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    with demo._progress(console) as progress:
        for text in [*demo.STEPS.values(), "rollback: 3000 sent, 1000 failed, paused"]:
            progress.add_task(text, total=11943, completed=11943)
    lines = [line for line in buf.getvalue().replace("\r", "\n").splitlines() if "/" in line]
    assert lines and not any("…" in line for line in lines), lines
    for text in demo.STEPS.values():
        assert any(text in line for line in lines), text
