"""What a proxy worker holds while it runs: the config in force, its experiment table, the
event publisher and the upstream clients. A reload swaps the config atomically; requests
in flight keep the snapshot they started with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from ..config import Config, ConfigError, load_config
from ..delivery.publisher import EventPublisher
from .assignment import Assignment, CompiledExperiment, ExperimentTable
from .overrides import OverrideStore
from .upstream import UpstreamClients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the config in force."""

    config: Config
    table: ExperimentTable


class Runtime:
    """The mutable state of one proxy worker; see the module docstring."""

    def __init__(self, config: Config, config_path: str | Path | None = None,
                 publisher: EventPublisher | None = None) -> None:
        self.config_path = Path(config_path) if config_path else None
        self._loaded_mtime = self._mtime()
        self.snapshot = Snapshot(config, ExperimentTable(config))
        self.overrides = OverrideStore(config.proxy.state_dir)
        self.publisher = publisher
        self.clients = UpstreamClients()

    @property
    def config(self) -> Config:
        """Return the config in force."""
        return self.snapshot.config

    def _mtime(self) -> int | None:
        try:
            return self.config_path.stat().st_mtime_ns if self.config_path else None
        except OSError:
            return None

    def reload_if_changed(self) -> bool:
        """Reload when the file changed since it was loaded (a SIGHUP may have come before the handler)."""
        return self._mtime() != self._loaded_mtime and self.reload()

    def reload(self) -> bool:
        """Re-read the config file; swap it in when valid, else log and keep the old one. Return success."""
        if self.config_path is None:
            return False
        self._loaded_mtime = self._mtime()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("refused").inc()
            log.error("config reload refused, the previous config stays in force: %s", exc)
            return False
        old = self.snapshot.config
        if (new.kafka != old.kafka or new.proxy.state_dir != old.proxy.state_dir
                or new.drift.languages != old.drift.languages):
            log.warning("config reload: kafka, proxy.state_dir and drift.languages changes take effect at the "
                        "next restart")
        self.snapshot = Snapshot(new, ExperimentTable(new))
        metrics.CONFIG_RELOADS.labels("applied").inc()
        log.info("config reloaded from %s: %d experiments", self.config_path, len(new.experiments))
        return True

    def assign(self, exp: CompiledExperiment, unit_id: str | None, forced_arm: str | None = None) -> Assignment:
        """Return the assignment of a unit, with the admin overrides of that experiment phase applied."""
        o = self.overrides.get(exp.config.key, exp.config.phase)
        paused = None if o is None or o.status is None else o.status == "paused"
        return exp.assign(unit_id, forced_arm, paused=paused, coverage=None if o is None else o.coverage)
