"""What a proxy worker holds while it runs: the config in force, its experiment table, the
event publisher and the upstream clients. A reload swaps the config atomically; requests
in flight keep the snapshot they started with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from ..config import Config, ConfigError, load_config
from ..control.channel import Control, FileControl, KafkaControl
from ..control.state import ExperimentState, StateTable
from ..delivery.publisher import EventPublisher
from .assignment import Assignment, CompiledExperiment, ExperimentTable
from .segment_attributes import AttributeRules
from .shadow import ShadowGate
from .tracing import Tracing
from .upstream import UpstreamClients
from .upstream_info import UpstreamInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the config in force."""

    config: Config
    table: ExperimentTable
    attributes: AttributeRules  # what a request may say about its segments

    @classmethod
    def of(cls, config: Config) -> Snapshot:
        """Return the snapshot of ``config`` (its experiments and attribute rules compiled)."""
        return cls(config, ExperimentTable(config), AttributeRules(config.proxy))


class Runtime:
    """The mutable state of one proxy worker; see the module docstring."""

    def __init__(self, config: Config, config_path: str | Path | None = None,
                 publisher: EventPublisher | None = None) -> None:
        self.config_path = Path(config_path) if config_path else None
        self._loaded_mtime = self._mtime()
        self.snapshot = Snapshot.of(config)
        self.upstream_info = UpstreamInfo()  # the serving side's join (docs/serving.md)
        self.control: Control = self._open_control(config)
        self.publisher = publisher
        self.clients = UpstreamClients()
        self.open_streams = 0  # streams this worker relays now (read and written on its event loop only)
        self.shadow_gate = ShadowGate()  # shadow calls in flight and their rate budget (docs/shadow.md)
        self.tracing: Tracing | None = None  # OpenTelemetry (docs/tracing.md), opened at start-up when on

    def _open_control(self, config: Config) -> Control:
        """Return the (not yet started) control channel: the control topic, or the state file without Kafka."""
        table = StateTable()
        if not config.kafka.enabled:
            return FileControl(table, config.proxy.state_dir, self._applied)
        return KafkaControl(config.kafka, table, config.proxy.state_dir, self._applied, name="proxy",
                            on_connected=lambda up: metrics.CONTROL_CONNECTED.labels(config.kafka.control_topic)
                            .set(1 if up else 0))

    def _applied(self, state: ExperimentState) -> None:
        """A change reached this worker: log it and update the state gauges of the current phase."""
        exp = self.snapshot.config.experiment(state.experiment)
        current = exp is not None and exp.phase == state.phase
        log.info("control: %s phase %d %s (coverage %.4g, %s) by %s%s: %s [revision %d]%s", state.experiment,
                 state.phase, state.status, state.coverage, state.action, state.actor,
                 f" ({state.changed_by})" if state.changed_by else "", state.reason, state.revision,
                 "" if current else " (not the configured phase: kept, not applied)")
        if current and hasattr(self, "control"):  # not while the channel is being built (cache load)
            self.export_state()

    def export_state(self) -> None:
        """Set the coverage and paused gauges of every configured experiment from the state in force, and the
        upstreams' info series of the config in force."""
        self.upstream_info.export(self.snapshot.config)
        for exp in self.snapshot.config.experiments:
            st = self.control.table.effective(exp)
            metrics.EXPERIMENT_COVERAGE.labels(exp.key).set(st.coverage)
            metrics.EXPERIMENT_PAUSED.labels(exp.key).set(1 if st.status == "paused" else 0)

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
                or new.drift.languages != old.drift.languages or new.tracing != old.tracing):
            log.warning("config reload: kafka, proxy.state_dir, drift.languages and tracing changes take effect at the "
                        "next restart")
        self.snapshot = Snapshot.of(new)
        self.export_state()
        metrics.CONFIG_RELOADS.labels("applied").inc()
        log.info("config reloaded from %s: %d experiments", self.config_path, len(new.experiments))
        return True

    def assign(self, exp: CompiledExperiment, unit_id: str | None, forced_arm: str | None = None) -> Assignment:
        """Return the assignment of a unit under the state in force (control topic, else config)."""
        st = self.control.table.get(exp.config.key, exp.config.phase)
        holdout = self.snapshot.table.holdout
        if st is None:  # nobody changed this phase: the config (and the first rollout step) rule
            return exp.assign(unit_id, forced_arm, coverage=exp.config.initial_coverage, holdout=holdout)
        return exp.assign(unit_id, forced_arm, paused=st.status == "paused", coverage=st.coverage, holdout=holdout)
