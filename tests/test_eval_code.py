"""Issue 26, code tasks: each arm's code run against its case's tests in a limited subprocess.

Code that passes, fails, does not compile, loops forever, sleeps past the wall clock, runs out of
memory, tries the network or tries to start a process: each is classified, and none escapes its
limits (the looping process is dead afterwards, the network listener got no connection, the
forbidden command left no file).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import orjson
import pytest
import yaml

from splitwatch.service.evaluation.sandbox import SandboxLimits, network_namespace_available, run_code_case
from tests.test_eval import JsonHandler, _eval, serve

GOOD = "```python\ndef add(a, b):\n    return a + b\n```"


def _answers(tmp: Path, port: int) -> dict[str, str]:
    """The planted candidate's answer per case."""
    return {
        "pass": "Here it is:\n" + GOOD,
        "fail": "```python\ndef add(a, b):\n    return a - b\n```",
        "syntax": "```python\ndef add(a, b) return a + b\n```",
        "loop": f"```python\nimport os\nopen({str(tmp / 'loop.pid')!r}, 'w').write(str(os.getpid()))\n"
                "def add(a, b):\n    while True:\n        pass\n```",
        "sleep": "```python\nimport time\ndef add(a, b):\n    time.sleep(600)\n```",
        "memory": "```python\ndef add(a, b):\n    block = bytearray(8 * 1024 ** 3)\n"
                  "    return a + b\n```",
        "network": "```python\nimport socket\ndef add(a, b):\n    try:\n"
                   f"        socket.create_connection(('127.0.0.1', {port}), 2)\n"
                   "    except Exception:\n        pass\n    return a + b\n```",
        "process": f"```python\nimport os\ndef add(a, b):\n    os.system('touch {tmp / 'escaped'}')\n"
                   "    return a + b\n```",
        "raw_socket": "```python\nimport socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
                      "def add(a, b):\n    return a + b\n```",
    }


class _CodeModel(JsonHandler):
    """Answers each case (its prompt's first word) with its planted code; the right code otherwise."""

    answers: dict[str, str] = {}

    def do_POST(self) -> None:
        body = self.read_json()
        text = self.answers.get(body["prompt"].split(":", 1)[0], GOOD)
        self.send_json({"id": "c", "object": "text_completion", "model": body["model"],
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})


def test_code_cases_are_classified_and_none_escapes(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    planted = _answers(tmp_path, port)
    cases = [{"id": k, "prompt": f"{k}: write add(a, b) returning the sum", "code_tests": "assert add(2, 3) == 5"}
             for k in planted]
    dataset = tmp_path / "code.jsonl"
    dataset.write_text("".join(orjson.dumps(c).decode() + "\n" for c in cases))
    base, ft = serve(_CodeModel, answers={}), serve(_CodeModel, answers=planted)  # the control writes it right
    try:
        cfg = {"kafka": {"enabled": False}, "experiments": [{"key": "support-ft", "model": "coder", "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": f"http://127.0.0.1:{base.server_port}/v1",
                                                        "model": "m-base"}},
            {"name": "finetuned", "weight": 50, "upstream": {"base_url": f"http://127.0.0.1:{ft.server_port}/v1",
                                                             "model": "m-ft"}}]}]}
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = tmp_path / "out"
        res = _eval(path, out, "--code-timeout", "3", dataset=dataset)
        assert res.returncode == 0, res.stderr
        assert "task code, inferred from the lines" in res.stderr
        runs = {}
        for line in (out / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["arm"].startswith("code/"):
                runs[(r["arm"], r["case"])] = (json.loads(r["answer"]), r["latency_s"])
        outcome = {case: runs[("code/finetuned", case)][0]["outcome"] for case in planted}
        assert outcome == {"pass": "pass", "fail": "fail", "syntax": "syntax_error", "loop": "timeout",
                           "sleep": "timeout", "memory": "memory", "network": "blocked", "process": "blocked",
                           "raw_socket": "blocked"}
        assert all(runs[("code/base", c)][0]["outcome"] == "pass" for c in planted)
        assert runs[("code/finetuned", "syntax")][0]["compiled"] is False
        # none escaped: the looping process is gone, the listener got no connection, the command never ran
        pid = int((tmp_path / "loop.pid").read_text())
        assert not Path(f"/proc/{pid}").exists()
        with pytest.raises(TimeoutError):
            listener.accept()
        assert not (tmp_path / "escaped").exists()
        assert runs[("code/finetuned", "sleep")][1] < 3 + 5  # killed at the wall-clock bound, not left running
        report = json.loads((out / "report.json").read_text())
        fig = report["per_arm"]["finetuned"]
        assert fig["compile_rate"] == pytest.approx(8 / 9) and fig["pass_rate"] == pytest.approx(1 / 9)
        assert fig["code_outcomes"] == {"pass": 1, "fail": 1, "syntax_error": 1, "timeout": 2, "memory": 1,
                                        "blocked": 3}
        cmp = {c["metric"]: c for c in report["comparisons"]}
        assert cmp["pass_rate"]["method"] == "mcnemar_exact" and cmp["pass_rate"]["difference"] == pytest.approx(-8 / 9)
        assert "## Code tasks" in (out / "report.md").read_text()
    finally:
        base.shutdown()
        ft.shutdown()
        listener.close()


def test_the_sandbox_empties_the_environment_and_works_in_a_temporary_directory(tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    seen = tmp_path / "seen.json"
    code = ("import os, json\n"
            "devices = [line.split(':')[0].strip() for line in open('/proc/self/net/dev').readlines()[2:]]\n"
            f"json.dump({{'key': os.environ.get('OPENAI_API_KEY'), 'cwd': os.getcwd(), 'net': devices}}, "
            f"open({str(seen)!r}, 'w'))\n")
    out = run_code_case(code, "pass", SandboxLimits(cpu_s=2, wall_s=5))
    assert out.outcome == "pass", out
    facts = json.loads(seen.read_text())
    assert facts["key"] is None  # no API key inherited
    assert Path(facts["cwd"]).name.startswith("splitwatch-code-") and not Path(facts["cwd"]).exists()
    if network_namespace_available():  # the second wall: an empty network namespace, loopback only
        assert facts["net"] == ["lo"], facts["net"]
    else:
        print("unshare -rn is not available here: the audit hook is the only network wall")
