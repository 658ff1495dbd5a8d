"""Several analyzer replicas over one lake: a consumer group, each writing its own partitions exactly once,
one leader for the live analysis; a replica killed with SIGKILL mid-ingest loses and doubles nothing."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from splitwatch.service.analyzer.lake import BatchConflictError, Lake, Record
from splitwatch.service.events import OutcomeEvent
from splitwatch.service.local.processes import (
    ManagedProcess,
    ObjectStore,
    free_port,
    splitwatch_command,
    wait_for_port,
)
from tests.harness import base_config, experiment_config, read_events, unique_by_event_id, wait_delivered


def _gauge(text: str, name: str) -> float | None:
    m = re.search(rf'^{name}\{{group="[^"]*"\}} ([0-9.]+)', text, re.M)
    return None if m is None else float(m.group(1))


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def _units(text: str) -> float:
    return sum(float(v) for v in re.findall(r'^splitwatch_units\{arm="\w+",experiment="support-ft"\} ([0-9.]+)',
                                            text, re.M))


def _send(url: str, sent: list[str], stop: threading.Event) -> None:
    """Send a unit's request and outcome every few milliseconds until ``stop`` (at most 5,000 units)."""
    with httpx.Client(timeout=10) as c:
        for i in range(5000):
            if stop.is_set():
                return
            time.sleep(0.005)
            unit = f"replica-{i}"
            r = c.post(url + "/v1/chat/completions", json={
                "model": "support-bot", "user": unit, "messages": [{"role": "user", "content": "help?"}]})
            assert r.status_code == 200
            outcome = {"experiment": "support-ft", "unit_id": unit, "metric": "resolved", "value": float(i % 3 == 0)}
            assert c.post(url + "/v1/outcomes", json=[outcome]).status_code == 202
            sent.append(unit)


def test_two_replicas_one_killed_mid_ingest_every_event_once_and_the_survivor_leads(
        broker, stubs, tmp_path: Path, topic: str, start_proxy) -> None:
    cfg = base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)])
    cfg["kafka"]["topic_partitions"] = 4
    proxy = start_proxy(config=cfg)
    cfg["analyzer"].update({"batch_max_events": 40, "batch_max_seconds": 0.2, "interval_s": 0.5})
    lake_dir = Path(cfg["analyzer"]["lake_dir"])
    replicas: list[tuple[ManagedProcess, int]] = []
    for name in ("a", "b"):
        path = tmp_path / f"analyzer-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        port = free_port()
        replicas.append((ManagedProcess(splitwatch_command("analyzer", "--config", str(path), "--port", str(port)),
                                        tmp_path / f"analyzer-{name}.log"), port))
    stop = threading.Event()
    sent: list[str] = []
    sender = threading.Thread(target=_send, args=(proxy.url, sent, stop), daemon=True)
    sender.start()
    try:
        for proc, port in replicas:
            proc.start()
            wait_for_port(port, proc=proc.proc)
        # both replicas in the group, each writing its own partitions, exactly one of them leading
        deadline = time.monotonic() + 90
        texts = ["", ""]
        while time.monotonic() < deadline:
            texts = [_scrape(port) for _, port in replicas]
            parts = [_gauge(t, "splitwatch_analyzer_partitions") or 0 for t in texts]
            leaders = [_gauge(t, "splitwatch_analyzer_leader") or 0 for t in texts]
            if parts == [2, 2] and sorted(leaders) == [0, 1] and len(Lake(lake_dir).markers()) >= 4:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the replicas never split the partitions: {parts}, leaders {leaders}")
        leader = leaders.index(1)
        assert _units(texts[1 - leader]) == 0  # only the leader exports the experiment's gauges
        victim, survivor_port = replicas[leader][0], replicas[1 - leader][1]
        assert sender.is_alive(), "the traffic ended before the kill: not mid-ingest"
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL  # the leader, while batches are being written
        time.sleep(2)  # traffic goes on while the dead replica's session runs out
        stop.set()
        sender.join(30)
        assert not sender.is_alive() and len(sent) < 5000
        wait_delivered(proxy.url)
        in_topic = unique_by_event_id(read_events(broker.bootstrap, topic, idle=2.0))
        # the survivor takes the dead one's partitions (after its session times out) and the lead
        deadline = time.monotonic() + 120
        text, rows = "", []
        con = duckdb.connect()
        while time.monotonic() < deadline:
            text = _scrape(survivor_port)
            rows = con.execute(f"SELECT event_id, kafka_partition, kafka_offset FROM "
                               f"read_parquet('{lake_dir}/date=*/*/*.parquet')").fetchall()
            if (_gauge(text, "splitwatch_analyzer_leader") == 1 and len(rows) >= len(in_topic)
                    and _units(text) == len(sent)):
                break
            time.sleep(0.5)
        assert _gauge(text, "splitwatch_analyzer_partitions") == 4
        assert _gauge(text, "splitwatch_analyzer_leader") == 1, "the live analysis did not move to the survivor"
        assert _units(text) == len(sent)  # its gauges cover every unit, from the whole lake
        assert len(rows) == len({(p, o) for _, p, o in rows}), "an offset is in the lake twice"
        assert len(rows) == len({e for e, _, _ in rows}) == len(in_topic), "every event exactly once"
        assert {e for e, _, _ in rows} == set(in_topic)
        assert {p for _, p, _ in rows} == {0, 1, 2, 3}
        log = (tmp_path / "analyzer-a.log").read_text() + (tmp_path / "analyzer-b.log").read_text()
        assert "takes over the live analysis" in log
    finally:
        stop.set()
        for proc, _ in replicas:
            proc.stop()


def _race_for_offset_100(location: str | Path) -> Lake:
    """Two writers that both believe they own partition 3 commit from offset 100: the first wins."""
    evs = [OutcomeEvent(experiment="x", phase=1, arm="a", unit_id=f"u{i}", metric="m", value=1.0) for i in range(6)]
    owner, zombie = Lake(location), Lake(location)
    assert owner.write_batch(3, [Record(3, 100 + i, e.to_json()) for i, e in enumerate(evs[:4])]) == (4, 0)
    with pytest.raises(BatchConflictError, match="offsets 100-105 of partition 3 were committed by another"):
        zombie.write_batch(3, [Record(3, 100 + i, e.to_json()) for i, e in enumerate(evs)])
    files = [f.rsplit("/", 1)[-1] for f in owner.storage.list("date=*/experiment=x/*.parquet")]
    assert files == ["p3-00000000000000000100-00000000000000000103.parquet"]  # the loser's file is gone
    assert Lake(location).recover([3]) == {3: 104}
    return owner


def test_a_batch_committed_by_another_writer_is_refused_on_s3(tmp_path: Path, monkeypatch) -> None:
    """The same fence on an object store: S3's conditional PUT (If-None-Match: *), on a real S3-protocol server."""
    for k, v in ObjectStore.CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    server = ObjectStore(tmp_path)
    server.start()
    try:
        lake = _race_for_offset_100(server.lake_uri("fence"))
        assert [m["first"] for m in lake.markers()] == [100]
    finally:
        server.stop()


def test_a_batch_committed_by_another_writer_is_refused_and_its_files_removed(tmp_path: Path) -> None:
    _race_for_offset_100(tmp_path)
    # recovering one partition leaves another writer's batch in flight alone
    in_flight = next(tmp_path.glob("date=*/experiment=x")) / "p5-00000000000000000000-00000000000000000009.parquet"
    in_flight.write_bytes(b"being written")
    assert Lake(tmp_path).recover([3]) == {3: 104} and in_flight.exists()
    assert Lake(tmp_path).recover([5]) == {} and not in_flight.exists()
    # a local write cut short before its rename is cleared with its partition, and only then
    cut_short = in_flight.with_name("p5-00000000000000000010-00000000000000000019.parquet.1a2b3c4d.tmp")
    cut_short.write_bytes(b"half")
    assert Lake(tmp_path).recover([3]) == {3: 104} and cut_short.exists()
    Lake(tmp_path).recover([5])
    assert not cut_short.exists()


def test_a_committed_batch_whose_files_another_recovery_deleted_is_written_again(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """A zombie wins the marker race after the new owner's recovery deleted its files: it writes them again."""
    lake = Lake(tmp_path)
    original = lake.storage.create_exclusive

    def recovery_then_commit(rel: str, data: bytes) -> bool:
        Lake(tmp_path).recover([4])  # the new owner recovers partition 4 between the write and the marker
        return original(rel, data)

    monkeypatch.setattr(lake.storage, "create_exclusive", recovery_then_commit)
    evs = [OutcomeEvent(experiment="x", phase=1, arm="a", unit_id=f"u{i}", metric="m", value=1.0) for i in range(3)]
    assert lake.write_batch(4, [Record(4, i, e.to_json()) for i, e in enumerate(evs)]) == (3, 0)
    (marker,) = Lake(tmp_path).markers(4)
    assert all((tmp_path / rel).is_file() for rel in marker["files"])
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(tmp_path / marker["files"][0])]).fetchone()[0] == 3
