"""Shared fixtures: one real Tansu broker per session, stub model servers, a proxy factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Broker, Proxy, StubModel, base_config, experiment_config, new_topic


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def broker(workdir: Path) -> Iterator[Broker]:
    b = Broker(workdir)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def stubs(workdir: Path) -> Iterator[tuple[StubModel, StubModel]]:
    base = StubModel(workdir, "base")
    ft = StubModel(workdir, "ft", "--token-delay-ms", "2")
    base.start()
    ft.start()
    yield base, ft
    ft.stop()
    base.stop()


@pytest.fixture
def topic() -> str:
    return new_topic()


@pytest.fixture
def start_proxy(broker: Broker, stubs: tuple[StubModel, StubModel], tmp_path: Path,
                topic: str) -> Iterator[Callable[..., Proxy]]:
    """Factory: start a proxy for the standard experiment (overrides as keyword arguments)."""
    started: list[Proxy] = []

    def start(experiment: dict[str, Any] | None = None, workers: int = 1, env: dict[str, str] | None = None,
              workdir: Path | None = None, config: dict[str, Any] | None = None, **proxy_opts: Any) -> Proxy:
        wd = workdir or tmp_path
        exp = experiment or experiment_config(*stubs)
        cfg = config or base_config(broker.bootstrap, topic, wd, [exp], **proxy_opts)
        p = Proxy(wd, cfg, workers=workers, env=env)
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
