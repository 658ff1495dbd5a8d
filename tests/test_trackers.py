"""Issue 27: reports logged where the team looks. A real `mlflow server` on loopback: after `splitwatch
eval --mlflow`, `splitwatch report --mlflow`, `splitwatch training --mlflow` and `splitwatch data --mlflow`,
MlflowClient reads back every metric and artifact. TensorBoard scalars written with tensorboardX are read
back by TensorBoard's own reader; W&B in offline mode keeps the same content on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS
from splitwatch.service.local.planted_runs import write_trainer_runs
from splitwatch.service.local.processes import ManagedProcess, StubModel, free_port, splitwatch_command, wait_for_port
from tests.test_eval import _config as eval_config
from tests.test_eval import _eval
from tests.test_report_cli import _config as report_config
from tests.test_report_cli import _write_lake


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    server = ManagedProcess([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "mlartifacts"), "--workers", "1"],
                            tmp_path / "mlflow.log")
    server.start()
    try:
        wait_for_port(port, timeout=120, proc=server.proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.stop()


def _runs(uri: str, experiment: str, phase: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"splitwatch/{experiment}")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.`splitwatch.phase` = '{phase}'")
    return client, runs


def _artifacts(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_every_report_is_read_back_from_a_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    base = StubModel(tmp_path, "base", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.7")
    ft = StubModel(tmp_path, "ft", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.9")
    for s in (base, ft):
        s.start()
    try:
        out = tmp_path / "eval"
        res = _eval(eval_config(tmp_path, base, ft), out, "--mlflow", mlflow_server, "--concurrency", "16")
        assert res.returncode == 0, res.stderr
        assert "MLflow: run " in res.stderr
    finally:
        for s in (base, ft):
            s.stop()
    report = json.loads((out / "report.json").read_text())
    client, runs = _runs(mlflow_server, "support-ft", "offline_eval")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["dataset_sha256"] == report["dataset"]["sha256"]
    assert run.data.params["model.finetuned"] == "m-ft" and run.data.params["arms"] == "base,finetuned"
    for arm, figures in report["per_arm"].items():
        for key, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert run.data.metrics[f"{arm}.{key}"] == pytest.approx(value, rel=1e-12), (arm, key)
    for c in report["comparisons"]:
        key = f"{c['arm']}_vs_{c['against']}.{c['metric']}"
        for field in ("difference", "p_adjusted"):
            assert run.data.metrics[f"{key}.{field}"] == pytest.approx(c[field], rel=1e-12)
        if c["low"] is not None:
            assert run.data.metrics[f"{key}.low"] == pytest.approx(c["low"], rel=1e-12)
    assert _artifacts(client, run.info.run_id) == {"report.html", "report.json", "report.md"}
    assert run.data.tags["splitwatch.experiment"] == "support-ft"

    # the online report, from a lake written directly
    cfg = report_config(tmp_path)
    day = datetime.now(UTC).date() - timedelta(days=1)
    _write_lake(tmp_path, day, units=400)
    res = subprocess.run(splitwatch_command("report", "--config", str(cfg), "--experiment", "support-ft", "--from",
                                            str(day), "--to", str(day), "--format", "json", "--mlflow",
                                            mlflow_server), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    online = json.loads(res.stdout)
    client, runs = _runs(mlflow_server, "support-ft", "online_report")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["period"] == f"{day}..{day}" and run.data.params["model.finetuned"] == "b"
    for r in online["results"]:
        key = f"{r['metric']}.{r['arm']}_vs_{r['control']}"
        if r["absolute_effect"] is not None:
            assert run.data.metrics[f"{key}.absolute_effect"] == pytest.approx(r["absolute_effect"], rel=1e-12)
            assert run.data.metrics[f"{key}.absolute_low"] == pytest.approx(r["absolute_ci"][0], rel=1e-12)
            assert run.data.metrics[f"{key}.absolute_high"] == pytest.approx(r["absolute_ci"][1], rel=1e-12)
    assert run.data.metrics["finetuned.units"] == online["units"]["finetuned"]
    assert run.data.tags["splitwatch.decision"] == online["verdict"]["decision"]
    assert _artifacts(client, run.info.run_id) == {"report.html", "report.json"}

    # training: the learning curves as metric histories, step by step
    runs_dir = write_trainer_runs(tmp_path / "runs")
    res = subprocess.run(splitwatch_command("training", *map(str, runs_dir.values()), "--output",
                                            str(tmp_path / "training"), "--experiment", "support-ft", "--mlflow",
                                            mlflow_server), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    client, runs = _runs(mlflow_server, "support-ft", "training")
    run = runs[0]
    assert run.data.metrics["full-ft.overfitting_from"] == 600 and run.data.metrics["full-ft-lr3e-4.diverged_at"] == 700
    history = client.get_metric_history(run.info.run_id, "full-ft.eval_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(100, 2001, 100))
    assert run.data.params["lora-r16.method"] == "lora"
    assert _artifacts(client, run.info.run_id) == {"report.html", "report.json"}

    # data checks: the counts
    test_set = tmp_path / "test.jsonl"
    test_set.write_text(SUPPORT_INTENTS.read_text())
    res = subprocess.run(splitwatch_command("data", str(SUPPORT_INTENTS), "--eval", str(test_set), "--output",
                                            str(tmp_path / "data"), "--experiment", "support-ft", "--mlflow",
                                            mlflow_server), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    client, runs = _runs(mlflow_server, "support-ft", "data")
    assert runs[0].data.metrics["contaminated"] == 220 and runs[0].data.metrics["contaminated_share"] == 1.0


def test_a_tracker_that_cannot_be_reached_is_a_clear_error(tmp_path: Path) -> None:
    runs_dir = write_trainer_runs(tmp_path / "runs")
    res = subprocess.run(splitwatch_command("training", str(runs_dir["lora-r16"]), "--output", str(tmp_path / "t"),
                                            "--mlflow", f"http://127.0.0.1:{free_port()}"),
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                              "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert res.returncode == 1 and "splitwatch: could not log to the tracker" in res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "t" / "report.html").exists()  # the report is written before it is sent


def test_tensorboard_scalars_are_read_back_by_tensorboards_reader(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs_dir = write_trainer_runs(tmp_path / "runs")
    res = subprocess.run(splitwatch_command("training", *map(str, runs_dir.values()), "--output",
                                            str(tmp_path / "training"), "--tensorboard", str(tmp_path / "tb")),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = {r["name"]: r for r in json.loads((tmp_path / "training" / "report.json").read_text())["runs"]}
    acc = EventAccumulator(str(tmp_path / "tb" / "default" / "training" / "training default"),
                           size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"full-ft.overfitting_from", "full-ft.eval_loss", "lora-r16.final_train_loss"} <= tags
    assert acc.Scalars("full-ft.overfitting_from")[0].value == 600
    curve = acc.Scalars("full-ft.eval_loss")
    expected = [(s, v) for s, v in report["full-ft"]["curves"]["eval_loss"]]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in curve] == expected  # float32 in event files


def _wandb_records(path: Path) -> list:
    """Return the protobuf records of an offline W&B run file: a 7-byte header (":W&B", magic, version),
    then LevelDB's log format (32 KiB blocks; records of checksum, length, type and data, a record split
    across blocks as FIRST, MIDDLE... LAST), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block = path.read_bytes(), 7, 32768
    assert data[:4] == b":W&B"
    out, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_keeps_the_same_content(tmp_path: Path) -> None:
    runs_dir = write_trainer_runs(tmp_path / "runs")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    res = subprocess.run(splitwatch_command("training", *map(str, runs_dir.values()), "--output",
                                            str(tmp_path / "training"), "--experiment", "support-ft", "--wandb",
                                            "splitwatch-test"), capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    (log,) = list((tmp_path / "wandb").rglob("run-*.wandb"))  # one offline run
    summary, config, history = {}, {}, []
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind in ("config", "run"):  # the run record carries the config given to wandb.init
            updates = record.config.update if kind == "config" else record.run.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    report = {r["name"]: r for r in json.loads((tmp_path / "training" / "report.json").read_text())["runs"]}
    assert summary["full-ft.overfitting_from"] == 600 and summary["full-ft-lr3e-4.diverged_at"] == 700
    assert summary["full-ft.best_eval_loss"] == pytest.approx(report["full-ft"]["best_eval_loss"], rel=1e-12)
    assert summary["splitwatch_phase"] == "training" and config["lora-r16.method"] == "lora"
    curve = [(h["full-ft/eval_loss/step"], h["full-ft/eval_loss"]) for h in history if "full-ft/eval_loss" in h]
    assert curve == [tuple(p) for p in report["full-ft"]["curves"]["eval_loss"]]
    files = {p.name for p in (log.parent / "files").iterdir()}
    assert {"report.html", "report.json"} <= files
