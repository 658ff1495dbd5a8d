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

from service.cli import build_parser
from service.config import parse_config

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
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (target,) = [s for s in services.values() if _matches(selector, s["metadata"]["labels"])]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in target["spec"]["ports"]}
    assert len(by_kind.get("ServiceMonitor", [])) == (len(sets) if values.get("serviceMonitor") else 0)
