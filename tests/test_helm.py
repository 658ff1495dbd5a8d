"""The Helm chart, rendered and linted by Helm's own Go SDK (helm-python-sdk: no helm binary here).

Checks what a cluster would otherwise find at deploy time: every workload's Service, selector, port
and ServiceMonitor line up; the ConfigMap, with the environment the pods and the image set, is a
valid splitwatch config; every container's arguments are accepted by the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from splitwatch.service.cli import build_parser
from splitwatch.service.config import parse_config

CHART = Path(__file__).resolve().parent.parent / "helm" / "splitwatch"
DOCKERFILE = CHART.parent.parent / "Dockerfile"
OPTIONS = [
    {},
    {"serviceMonitor": {"enabled": True}, "existingSecret": "splitwatch-keys",
     "proxy": {"persistence": {"enabled": False}},
     "config": {"kafka": {"bootstrap_servers": "kafka-0:9092,kafka-1:9092", "topic": "llm.events"},
                "drift": {"window_size": 500, "languages": ["en", "de", "fr"]},
                "experiments": [{"key": "support-ft", "model": "support-bot", "arms": [
                    {"name": "base", "weight": 0.5,
                     "upstream": {"base_url": "http://base:8000/v1", "model": "llama"}},
                    {"name": "finetuned", "weight": 0.5,
                     "upstream": {"base_url": "http://ft:8000/v1", "model": "llama-ft", "api_key_env": "FT_API_KEY"}},
                ]}]}},
    {"analyzer": {"enabled": False}, "drift": {"enabled": False}},
]


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="sw", namespace="prod")
    return [d for text in manifests.values() for d in yaml.safe_load_all(text) if d]


def _image_env() -> dict[str, str]:
    """Return the ENV the Dockerfile sets (KEY=VALUE pairs on ENV lines and their continuations)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(line for line in text.splitlines() if line.startswith("ENV "))))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_chart_lints_clean() -> None:
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # no warnings, no errors


@pytest.mark.parametrize("values", OPTIONS, ids=["defaults", "monitored-with-secret", "proxy-only"])
def test_rendered_workloads_line_up(values: dict[str, Any]) -> None:
    docs = _render(values)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sets = {s["metadata"]["name"]: s for s in by_kind["StatefulSet"]}
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    expected = {"sw-splitwatch-proxy"} | ({"sw-splitwatch-analyzer", "sw-splitwatch-drift"} if not values.get(
        "analyzer") else set())
    assert set(sets) == expected and set(services) == expected
    config_text = by_kind["ConfigMap"][0]["data"]["config.yaml"]
    image_env = _image_env()
    parser = build_parser()
    for name, sts in sets.items():
        pod = sts["spec"]["template"]
        assert _matches(sts["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        svc = services[sts["spec"]["serviceName"]]  # the governing Service exists
        assert _matches(svc["spec"]["selector"], pod["metadata"]["labels"])
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for sp in svc["spec"]["ports"]:
            assert sp["targetPort"] in ports, (name, sp)
        args = parser.parse_args(container["args"])  # the CLI accepts them
        assert args.port == next(iter(ports.values())) and args.host == "0.0.0.0"
        assert args.config == "/etc/splitwatch/config.yaml"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["config"] == "/etc/splitwatch"
        env = {**image_env, **{e["name"]: e["value"] for e in container.get("env", [])}}
        cfg = parse_config(yaml.safe_load(config_text), environ=env)  # valid as the pod sees it
        data_mount = next(path for key, path in mounts.items() if key != "config")
        # whatever the process keeps across restarts lands on the pod's volume
        kept = {"proxy": [cfg.kafka.spool.dir, cfg.proxy.state_dir], "analyzer": [cfg.analyzer.lake_dir],
                "drift": [cfg.drift.state_dir]}[args.command]
        assert all(Path(k).is_relative_to(data_mount) for k in kept), (name, kept, data_mount)
        if values.get("existingSecret"):
            assert container["envFrom"] == [{"secretRef": {"name": values["existingSecret"]}}]
        if args.command == "proxy":
            assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.proxy.graceful_shutdown_s
        # every process is probed on a path it serves, on a port it listens on
        probe = container["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz" and probe["port"] in ports
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (target,) = [s for s in services.values() if _matches(selector, s["metadata"]["labels"])]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in target["spec"]["ports"]}
    assert len(by_kind.get("ServiceMonitor", [])) == (len(sets) if values.get("serviceMonitor") else 0)


# --- images: the Dockerfile's two targets, and which one each workload runs ------------------------

WORKLOAD_TARGET = {"proxy": "proxy", "analyzer": "full", "drift": "full"}


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Return each stage of the Dockerfile by name: its (INSTRUCTION, arguments) in order, FROM first."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            name = rest.partition(" AS ")[2]
            current = stages.setdefault(name.strip(), [])
        current.append((instruction, rest.strip()))
    return stages


def _stage_chain(stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """Return every instruction that builds ``name``: its base stages' first, then the stages it copies from."""
    own = stages[name]
    base = own[0][1].split(" AS ")[0]
    chain = _stage_chain(stages, base) if base in stages else []
    for instruction, rest in own[1:]:
        m = re.match(r"--from=(\S+)", rest)
        if instruction == "COPY" and m:
            chain += _stage_chain(stages, m.group(1))
    return chain + own


def test_dockerfile_has_a_slim_proxy_target_and_a_full_target() -> None:
    stages = _dockerfile_stages()
    assert {"proxy", "full"} <= set(stages)
    assert list(stages)[-1] == "proxy"  # a plain `docker build .` gives the slim image
    for target, wants_drift in (("proxy", False), ("full", True)):
        chain = _stage_chain(stages, target)
        runs = " ".join(rest for instruction, rest in chain if instruction == "RUN")
        extras = {e for group in re.findall(r'"\.\[([a-z0-9,]+)\]"', runs) for e in group.split(",")}
        # the analyzer image: every report and lake; both: the proxy's tracing (issue 31), and no alibi-detect
        full = {"drift", "eval", "training", "data", "trackers", "s3", "tracing"}
        assert extras == (full if wants_drift else {"tracing"}), target
        assert "pip install" in runs and "--no-index" in runs  # only the wheels built in the image
        assert ("wordnet-base" in runs) == wants_drift  # METEOR's WordNet, from Debian, in the full image
        users = [rest for instruction, rest in chain if instruction == "USER"]
        assert users and users[-1] not in ("root", "0"), target  # runs unprivileged
        assert ("ENTRYPOINT", '["splitwatch"]') in chain
        (cmd,) = [rest for instruction, rest in stages[target] if instruction == "CMD"]
        args = build_parser().parse_args(yaml.safe_load(cmd))  # the default command is a valid CLI call
        assert args.command == {"proxy": "proxy", "full": "analyzer"}[target]


@pytest.mark.parametrize("values", [{}, {"image": {"proxy": {"repository": "reg/p", "tag": "1.2"},
                                                   "full": {"repository": "reg/f", "tag": "1.3"}}}],
                         ids=["default-tags", "own-registry"])
def test_each_workload_runs_the_image_that_can_run_it(values: dict[str, Any]) -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    images = {t: {**defaults[t], **values.get("image", {}).get(t, {})} for t in ("proxy", "full")}
    stages = _dockerfile_stages()
    seen = set()
    for doc in _render(values):
        if doc["kind"] != "StatefulSet":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        target = WORKLOAD_TARGET[container["args"][0]]
        assert target in stages  # the Dockerfile builds it
        want = images[target]
        assert container["image"] == f"{want['repository']}:{want['tag'] or chart_meta['appVersion']}"
        seen.add(container["args"][0])
    assert seen == set(WORKLOAD_TARGET)
    assert images["proxy"]["repository"] != images["full"]["repository"]


def test_the_proxy_can_scale_on_open_streams() -> None:
    from splitwatch.service.config import ProxyConfig

    docs = _render({"proxy": {"autoscaling": {"enabled": True, "maxReplicas": 6}}})
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "sw-splitwatch-proxy"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": sts["metadata"]["name"]}
    assert "replicas" not in sts["spec"]  # the autoscaler owns it
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    streams, cpu = hpa["spec"]["metrics"]
    assert streams["pods"]["metric"]["name"] == "splitwatch_open_streams"  # the metric the proxy exports
    target = float(streams["pods"]["target"]["averageValue"])
    workers = int(sts["spec"]["template"]["spec"]["containers"][0]["args"][-1])
    # it scales out before a pod's workers refuse streams
    assert 0 < target < workers * ProxyConfig().max_concurrent_streams
    assert cpu["resource"]["target"]["averageUtilization"] == 70
    off = _render({})
    assert not [d for d in off if d["kind"] == "HorizontalPodAutoscaler"]
    assert next(d for d in off if d["kind"] == "StatefulSet"
                and d["metadata"]["name"] == "sw-splitwatch-proxy")["spec"]["replicas"] == 2


# --- the lake's storage, analyzer replicas and the weekly report (issue 28) ------------------------

EXPERIMENTS = OPTIONS[1]["config"]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else doc["spec"][
        "template"]["spec"]
    (container,) = spec["containers"]
    return container


def test_the_weekly_report_is_a_cronjob_per_experiment_beside_the_lake() -> None:
    docs = _render({"config": EXPERIMENTS})
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    (analyzer,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-analyzer")]
    (job,) = [d for d in docs if d["kind"] == "CronJob"]
    assert job["spec"]["schedule"] == "0 6 * * 1" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = _container(job)
    args = build_parser().parse_args(container["args"])  # the CLI accepts them
    assert (args.command, args.experiment, args.format, args.rollups) == ("report", "support-ft", "html", True)
    assert args.output.endswith("/") and Path(args.output).is_relative_to("/var/lib/splitwatch")  # a directory
    env = {e["name"]: e["value"] for e in container["env"]}
    analyzer_env = {e["name"]: e["value"] for e in _container(analyzer)["env"]}
    cfg = parse_config(yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]),
                       environ={**_image_env(), **env})
    assert cfg.analyzer.engine == "duckdb" and env["SPLITWATCH_ANALYZER__LAKE_DIR"] == analyzer_env[
        "SPLITWATCH_ANALYZER__LAKE_DIR"]  # the lake the analyzer writes
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    analyzer_claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                       for v in analyzer["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == analyzer_claims == {"lake": claim["metadata"]["name"]}
    # ReadWriteOnce: the job is scheduled on the analyzer's node
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert _matches(term["labelSelector"]["matchLabels"], analyzer["spec"]["template"]["metadata"]["labels"])
    assert container["image"].startswith(yaml.safe_load((CHART / "values.yaml").read_text())["image"]["full"][
        "repository"] + ":")


def test_analyzer_replicas_need_a_lake_they_can_all_write() -> None:
    with pytest.raises(Exception, match=r"analyzer\.replicas > 1 needs a lake every replica can write"):
        _render({"analyzer": {"replicas": 3}})
    shared = _render({"analyzer": {"replicas": 3, "persistence": {"accessMode": "ReadWriteMany"}},
                      "config": EXPERIMENTS})
    (claim,) = [d for d in shared if d["kind"] == "PersistentVolumeClaim"]
    (sts,) = [d for d in shared if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-analyzer")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and sts["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in sts["spec"]  # one claim for all, not one each
    (job,) = [d for d in shared if d["kind"] == "CronJob"]
    assert "affinity" not in job["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # any node can mount it
    s3 = _render({"analyzer": {"replicas": 2, "lake": {"uri": "s3://lake-bucket/events"}}, "config": EXPERIMENTS})
    assert not [d for d in s3 if d["kind"] == "PersistentVolumeClaim"]
    for doc in s3:
        if doc["kind"] in ("CronJob",) or (doc["kind"] == "StatefulSet" and "analyzer" in doc["metadata"]["name"]):
            env = {e["name"]: e["value"] for e in _container(doc)["env"]}
            assert env["SPLITWATCH_ANALYZER__LAKE_DIR"] == "s3://lake-bucket/events"


def test_the_weekly_report_on_spark_is_a_scheduled_spark_application() -> None:
    with pytest.raises(Exception, match=r"report\.spark\.image"):
        _render({"report": {"engine": "spark"}, "config": EXPERIMENTS})
    with pytest.raises(Exception, match=r"analyzer\.lake\.uri"):
        _render({"report": {"engine": "spark", "spark": {"image": "reg/sw-spark:1"}}, "config": EXPERIMENTS})
    with pytest.raises(Exception, match="choose duckdb or spark"):
        _render({"report": {"engine": "trino"}, "config": EXPERIMENTS})
    docs = _render({"report": {"engine": "spark", "spark": {"image": "reg/sw-spark:1"},
                               "extraArgs": ["--mlflow", "http://mlflow:5000"]},
                    "analyzer": {"lake": {"uri": "s3://lake-bucket/events"}}, "config": EXPERIMENTS})
    assert not [d for d in docs if d["kind"] == "CronJob"]
    (app,) = [d for d in docs if d["kind"] == "ScheduledSparkApplication"]
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = app["spec"]["template"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["image"] == "reg/sw-spark:1"
    # the main file is the package's spark_report.py, whose arguments are `splitwatch report`'s
    main_file = CHART.parent.parent / "service" / "analyzer" / Path(spec["mainApplicationFile"]).name
    assert main_file.is_file()
    args = build_parser().parse_args(["report", *spec["arguments"]])
    assert (args.experiment, args.mlflow, args.rollups) == ("support-ft", "http://mlflow:5000", True)
    env = {e["name"]: e["value"] for e in spec["driver"]["env"]}
    assert env == {"SPLITWATCH_ANALYZER__LAKE_DIR": "s3://lake-bucket/events", "SPLITWATCH_ANALYZER__ENGINE": "spark"}
    mounts = {m["name"]: m["mountPath"] for m in spec["driver"]["volumeMounts"]}
    assert mounts == {"config": "/etc/splitwatch"} and spec["volumes"][0]["name"] == "config"
