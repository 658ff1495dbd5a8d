"""The assignment rule of the design: sha256 buckets, weights, coverage, phase, pause, forcing."""

from __future__ import annotations

import hashlib
from collections import Counter

from scipy.stats import binomtest, chisquare

from splitwatch.service.config import parse_config
from splitwatch.service.proxy.assignment import BUCKETS, CompiledExperiment, arm_ranges, bucket_of


def _experiment(weights: list[float], **kw: object) -> CompiledExperiment:
    arms = [{"name": f"arm{i}", "weight": w, "upstream": {"base_url": "http://x/v1", "model": f"m{i}"}}
            for i, w in enumerate(weights)]
    cfg = parse_config({"experiments": [{"key": "exp", "model": "m", "arms": arms, **kw}]}, environ={})
    return CompiledExperiment(cfg.experiments[0])


def test_bucket_matches_the_documented_formula() -> None:
    # Written out independently of service.assignment, as an analyst would in SQL or a notebook.
    for unit in ["u1", "user-42", "émile", ""]:
        expected = int(hashlib.sha256(f"support-ft:{unit}".encode()).hexdigest()[:16], 16) % 10000
        assert bucket_of("support-ft", unit) == expected
    # A fixed vector, so that any change of the rule breaks this test.
    assert bucket_of("support-ft", "user-1") == int.from_bytes(
        hashlib.sha256(b"support-ft:user-1").digest()[:8], "big") % 10000


def test_ranges_are_contiguous_and_proportional() -> None:
    r = arm_ranges(_experiment([50, 50]).config)
    assert [(x.start, x.end) for x in r] == [(0, 5000), (5000, 10000)]
    r = arm_ranges(_experiment([90, 10]).config)
    assert [(x.start, x.end) for x in r] == [(0, 9000), (9000, 10000)]
    r = arm_ranges(_experiment([1, 1, 1]).config)
    assert [(x.start, x.end) for x in r] == [(0, 3333), (3333, 6667), (6667, 10000)]
    assert r[-1].end == BUCKETS


def test_split_over_20000_units_matches_weights() -> None:
    for weights in ([50, 50], [80, 20], [1, 2, 3]):
        exp = _experiment(weights)
        counts = Counter(exp.assign(f"unit-{i}").arm for i in range(20_000))
        observed = [counts[f"arm{i}"] for i in range(len(weights))]
        expected = [20_000 * w / sum(weights) for w in weights]
        assert chisquare(observed, expected).pvalue > 0.001, (weights, observed)


def test_assignment_is_deterministic() -> None:
    a, b = _experiment([50, 50]), _experiment([50, 50])
    assert all(a.assign(f"u{i}").arm == b.assign(f"u{i}").arm for i in range(2000))


def test_raising_coverage_never_moves_a_unit() -> None:
    units = [f"unit-{i}" for i in range(20_000)]
    previous: dict[str, str] = {}
    for coverage in (0.05, 0.1, 0.3, 0.5, 0.9, 1.0):
        exp = _experiment([70, 30], coverage=coverage)
        admitted = {}
        for u in units:
            a = exp.assign(u)
            if a.in_experiment:
                admitted[u] = a.arm
            else:
                assert a.excluded_reason == "not_covered" and a.arm == "arm0"
        # every unit admitted before is still admitted, in the same arm
        assert all(admitted.get(u) == arm for u, arm in previous.items())
        share = len(admitted) / len(units)
        assert abs(share - coverage) < 0.02, (coverage, share)
        counts = Counter(admitted.values())
        assert binomtest(counts["arm0"], len(admitted), 0.7).pvalue > 0.001
        previous = admitted


def test_new_phase_reshuffles_units() -> None:
    p1, p2 = _experiment([50, 50], phase=1), _experiment([50, 50], phase=2)
    same = sum(p1.assign(f"u{i}").arm == p2.assign(f"u{i}").arm for i in range(10_000))
    assert 4700 < same < 5300  # independent re-randomisation: about half keep their arm


def test_pause_no_unit_and_forcing() -> None:
    exp = _experiment([50, 50], status="paused")
    a = exp.assign("u1")
    assert (a.arm, a.in_experiment, a.excluded_reason, a.logged) == ("arm0", False, "paused", False)
    exp = _experiment([50, 50])
    assert exp.assign(None).excluded_reason == "no_unit"
    forced = exp.assign("u1", forced_arm="arm1")
    assert forced.forced and forced.logged and not forced.in_experiment and forced.arm == "arm1"
    # admin overrides take precedence over the config
    assert exp.assign("u1", paused=True).excluded_reason == "paused"
    assert _experiment([50, 50], status="paused").assign("u1", paused=False).in_experiment


def test_analysts_can_recompute_buckets_in_sql() -> None:
    # The SQL of docs/assignment.md, run by DuckDB, must agree with the proxy on every unit, in
    # phase 1 and in a later phase (whose salt carries the phase).
    import duckdb

    units = [f"unit-{i}" for i in range(5000)] + ["émile", "用户-7", ""]
    con = duckdb.connect()
    con.execute("CREATE TABLE units (unit_id VARCHAR)")
    con.executemany("INSERT INTO units VALUES (?)", [(u,) for u in units])
    for phase, salt in ((1, "support-ft"), (3, "support-ft:phase3")):
        rows = con.execute(
            "SELECT unit_id, (('0x' || substr(sha256(? || ':' || unit_id), 1, 16))::UBIGINT % 10000) "
            "FROM units", [salt]).fetchall()
        exp = _experiment([50, 50], phase=phase, salt="support-ft")
        assert exp.salt == salt
        assert {u: b for u, b in rows} == {u: bucket_of(exp.salt, u) for u in units}
