"""Config validation: errors name the bad field; SPLITWATCH_* overrides; `splitwatch config check`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from splitwatch.service.config import ConfigError, load_config, parse_config
from splitwatch.service.local.processes import splitwatch_command

GOOD = {
    "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
    "experiments": [{
        "key": "support-ft", "model": "support-bot",
        "arms": [{"name": "base", "weight": 50, "upstream": {"base_url": "http://a/v1", "model": "m1"}},
                 {"name": "finetuned", "weight": 50, "upstream": {"base_url": "http://b/v1", "model": "m2"}}],
        "metrics": [{"name": "resolved", "kind": "binary"}],
    }],
}


def _with(path: str, value: object) -> dict:
    import copy

    data = copy.deepcopy(GOOD)
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return data


def test_design_example_is_valid() -> None:
    cfg = parse_config(GOOD, environ={})
    exp = cfg.experiments[0]
    assert exp.salt is None and exp.effective_salt == "support-ft"
    assert exp.control.name == "base"
    assert cfg.kafka.topic == "splitwatch.events"
    assert cfg.proxy.max_body_bytes == 1_048_576 and cfg.proxy.require_unit is False


@pytest.mark.parametrize(("path", "value", "field"), [
    ("experiments.0.coverage", 1.5, "experiments.0.coverage"),
    ("experiments.0.arms.0.weight", -1, "experiments.0.arms.0.weight"),
    ("experiments.0.arms.1.upstream.base_url", "ftp://x", "experiments.0.arms.1.upstream.base_url"),
    ("experiments.0.status", "stopped", "experiments.0.status"),
    ("experiments.0.metrics.0.kind", "median", "experiments.0.metrics.0.kind"),
    ("kafka.bogus", 1, "kafka.bogus"),
    ("experiments.0.phase", 0, "experiments.0.phase"),
    ("experiments.0.arms.1.name", "unassigned", "experiments.0.arms.1.name"),
])
def test_errors_name_the_bad_field(path: str, value: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with(path, value), environ={})
    assert field in str(err.value)


def test_duplicate_arms_and_single_arm_are_refused() -> None:
    arms = GOOD["experiments"][0]["arms"]
    with pytest.raises(ConfigError, match="unique"):
        parse_config(_with("experiments.0.arms", [arms[0], arms[0]]), environ={})
    with pytest.raises(ConfigError, match=r"experiments\.0\.arms"):
        parse_config(_with("experiments.0.arms", [arms[0]]), environ={})


def test_env_overrides_keep_types_and_reach_list_items() -> None:
    env = {"SPLITWATCH_KAFKA__BOOTSTRAP_SERVERS": "broker:9093", "SPLITWATCH_PROXY__REQUIRE_UNIT": "true",
           "SPLITWATCH_EXPERIMENTS__0__COVERAGE": "0.25", "SPLITWATCH_EXPERIMENTS__0__STATUS": "paused",
           "SPLITWATCH_ADMIN_TOKEN": "not-an-override"}
    cfg = parse_config(_with("proxy", {}), environ=env)
    assert cfg.kafka.bootstrap_servers == "broker:9093"
    assert cfg.proxy.require_unit is True
    assert cfg.experiments[0].coverage == 0.25 and cfg.experiments[0].status == "paused"


def test_env_override_errors_name_the_variable_or_field() -> None:
    with pytest.raises(ConfigError, match="SPLITWATCH_EXPERIMENTS__3__STATUS"):
        parse_config(GOOD, environ={"SPLITWATCH_EXPERIMENTS__3__STATUS": "paused"})
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server \(set by the environment variable "
                       r"SPLITWATCH_KAFKA__BOOTSTRAP_SERVER\): unknown field; did you mean 'bootstrap_servers'\?"):
        parse_config(GOOD, environ={"SPLITWATCH_KAFKA__BOOTSTRAP_SERVER": "x:1"})
    with pytest.raises(ConfigError, match=r"proxy\.require_unit"):
        parse_config(GOOD, environ={"SPLITWATCH_PROXY__REQUIRE_UNIT": "maybe"})


def test_phase_changes_the_salt() -> None:
    cfg = parse_config(_with("experiments.0.phase", 3), environ={})
    assert cfg.experiments[0].effective_salt == "support-ft:phase3"


def test_cli_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    ok = subprocess.run(splitwatch_command("config", "check", str(good)),
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "support-ft" in ok.stdout
    assert "metrics: primary -; secondary resolved; guardrail -" in ok.stdout
    assert "has no metric with role: primary, so its verdict can never be ship" in ok.stdout
    assert "max_connections" not in ok.stdout  # the defaults fit: 200 connections for 200 streams
    small = tmp_path / "small_pool.yaml"
    small.write_text(yaml.safe_dump(_with("experiments.0.arms.1.upstream.max_connections", 50)))
    out = subprocess.run(splitwatch_command("config", "check", str(small)), capture_output=True, text=True).stdout
    assert ("upstream http://b/v1 (support-ft/finetuned): max_connections 50 is below "
            "proxy.max_concurrent_streams 200") in out
    assert "http://a/v1" not in out
    assert "analyzer.prices" not in out  # no prices at all: no cost metric, nothing to warn of
    priced = tmp_path / "priced.yaml"  # issue 25, finding 3: a price for one arm's model only
    priced.write_text(yaml.safe_dump(_with("analyzer", {"prices": {
        GOOD["experiments"][0]["arms"][0]["upstream"]["model"]: {"prompt_per_1k": 0.1, "completion_per_1k": 0.2}}})))
    out = subprocess.run(splitwatch_command("config", "check", str(priced)), capture_output=True, text=True).stdout
    ft_model = GOOD["experiments"][0]["arms"][1]["upstream"]["model"]
    assert f"warning: no price in analyzer.prices for finetuned ({ft_model})" in out
    assert "cost_per_request is unknown" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("experiments.0.coverage", 2)))
    res = subprocess.run(splitwatch_command("config", "check", str(bad)),
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "experiments.0.coverage" in res.stderr and "Traceback" not in res.stderr
    missing = subprocess.run(splitwatch_command("config", "check", str(tmp_path / "nope.yaml")),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    ramp = tmp_path / "ramp.yaml"
    ramp.write_text(yaml.safe_dump(_with("experiments.0.rollout", {"steps": [0.05, 0.5, 1.0]})))
    out = subprocess.run(splitwatch_command("config", "check", str(ramp)), capture_output=True, text=True).stdout
    assert "rollout: steps 0.05 -> 0.5 -> 1; a step needs 500 units and 60 min; auto_rollback on" in out
    assert "has no guardrail: the guard rolls back only on SRM and failing requests" in out
    bad_steps = tmp_path / "bad_steps.yaml"
    bad_steps.write_text(yaml.safe_dump(_with("experiments.0.rollout", {"steps": [0.5, 0.1]})))
    res = subprocess.run(splitwatch_command("config", "check", str(bad_steps)), capture_output=True, text=True)
    assert res.returncode == 2 and "experiments.0.rollout.steps" in res.stderr


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p, environ={})


def test_outcome_names_include_the_parts_of_ratio_metrics() -> None:
    metrics = [{"name": "resolution_rate", "kind": "ratio", "numerator": "resolved", "denominator": "requests"},
               {"name": "cost_per_resolution", "kind": "ratio", "numerator": "cost", "denominator": "resolved"}]
    cfg = parse_config(_with("experiments.0.metrics", metrics), environ={})
    assert cfg.experiments[0].outcome_names == {"resolution_rate", "cost_per_resolution", "resolved", "cost"}
    with pytest.raises(ConfigError, match="both 'numerator' and 'denominator'"):
        parse_config(_with("experiments.0.metrics", [{"name": "r", "kind": "ratio", "numerator": "x"}]), environ={})


def test_metric_roles_and_built_ins_in_the_config() -> None:
    cfg = parse_config(_with("experiments.0.metrics", [
        {"name": "resolved", "kind": "binary", "role": "primary", "mde": 0.02},
        {"name": "csat", "kind": "continuous"},
        {"name": "escalated", "kind": "binary", "direction": "decrease", "guardrail": True, "margin": 0.01},
        {"name": "error_rate", "role": "guardrail", "margin": 0.005},
        {"name": "latency_p95_ms", "role": "guardrail", "margin": 0.1, "relative_margin": True}]), environ={})
    m = {x.name: x for x in cfg.experiments[0].metrics}
    assert [m[n].role for n in m] == ["primary", "secondary", "guardrail", "guardrail", "guardrail"]
    assert m["escalated"].guardrail and m["resolved"].mde == 0.02
    assert (m["latency_p95_ms"].kind, m["latency_p95_ms"].quantile, m["latency_p95_ms"].direction) == (
        "quantile", 0.95, "decrease")
    assert m["error_rate"].kind == "ratio"
    # a built-in is not an outcome clients may post
    assert cfg.experiments[0].outcome_names == {"resolved", "csat", "escalated"}


@pytest.mark.parametrize(("metric", "message"), [
    ({"name": "x", "kind": "binary", "role": "guardrail"}, "a guardrail needs 'margin'"),
    ({"name": "x", "kind": "binary", "margin": 0.1}, "only for guardrails"),
    ({"name": "x", "kind": "binary", "guardrail": True, "role": "primary"}, "contradicts 'role: primary'"),
    ({"name": "x", "kind": "binary", "role": "main"}, "metrics.0.role"),
    ({"name": "latency_p95_ms", "kind": "binary", "role": "guardrail", "margin": 1}, "built-in: its kind"),
    ({"name": "resolved"}, "metrics.0.kind: Field required"),
])
def test_bad_metric_roles_are_refused_naming_the_field(metric: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(_with("experiments.0.metrics", [metric]), environ={})


TYPO = """\
kafka:
  bootstrap_servers: "127.0.0.1:9092"
  topik: splitwatch.events
experiments:
  - key: support-ft
    model: support-bot
    arms:
      - {name: base, weight: 30, upstream: {base_url: "http://a/v1", model: m1}}
      - name: finetuned
        wieght: 50
        upstream: {base_url: "http://", model: m2}
"""


def test_errors_name_the_line_suggest_the_key_and_refuse_a_url_without_host(tmp_path: Path) -> None:
    p = tmp_path / "typo.yaml"
    p.write_text(TYPO)
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    msg = str(err.value)
    assert "kafka.topik (line 3): unknown field; did you mean 'topic'?" in msg
    assert "experiments.0.arms.1.wieght (line 10): unknown field; did you mean 'weight'?" in msg
    assert "experiments.0.arms.1.upstream.base_url (line 11): 'http://' has no host" in msg


def test_yaml_errors_name_the_file_and_env_errors_name_the_variable(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert f'in "{p}", line 1' in str(err.value) and "<unicode string>" not in str(err.value)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    with pytest.raises(ConfigError) as err:
        load_config(good, environ={"SPLITWATCH_PROXY__PORT": "abc"})
    assert "proxy.port (set by the environment variable SPLITWATCH_PROXY__PORT)" in str(err.value)
    assert "(line" not in str(err.value)


def test_config_check_shows_shares_and_warns_on_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = subprocess.run(splitwatch_command("config", "check", str(empty)), capture_output=True, text=True)
    assert out.returncode == 0 and "warning: no experiments: every request gets 404 model_not_found" in out.stdout
    weights = tmp_path / "weights.yaml"
    weights.write_text(yaml.safe_dump(_with("experiments.0.arms.0.weight", 30)))
    out = subprocess.run(splitwatch_command("config", "check", str(weights)), capture_output=True, text=True)
    assert "arms: base=30 (37.5%), finetuned=50 (62.5%)" in out.stdout
