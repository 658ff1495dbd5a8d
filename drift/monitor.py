"""One experiment's drift watch: its reference, a window per arm and one over all arms, and what
each test of a window exports (gauges) and publishes (a drift event when the verdict changes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from splitwatch.service import metrics
from splitwatch.service.config import DriftConfig
from splitwatch.service.events import DriftEvent
from splitwatch.service.features import LANGUAGES

from .detector import DriftDetector, DriftReport, DriftSettings
from .reference import Reference, feature_row
from .windows import SlidingWindow

log = logging.getLogger(__name__)
ALL_ARMS = "all"


def settings_of(cfg: DriftConfig) -> DriftSettings:
    """Return the detector settings of the config."""
    return DriftSettings(cfg.test, cfg.p_val, cfg.correction, cfg.min_psi, cfg.min_language_tvd, cfg.classifier)


def reference_from_file(path: str | Path, languages: tuple[str, ...] = LANGUAGES) -> Reference:
    """Return a reference from prompts, one per line (.txt), or JSON lines with "text" or "features".

    Prompts' languages are detected among ``languages`` (the config's ``drift.languages``).
    """
    p = Path(path)
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in lines]
        if all("features" in r for r in rows):
            return Reference.from_features((r["features"] for r in rows), f"file {p}")
        return Reference.from_texts((r["text"] for r in rows), f"file {p}", languages)
    return Reference.from_texts(lines, f"file {p}", languages)


class ExperimentMonitor:
    """Collects or loads the reference, then tests sliding windows against it."""

    def __init__(self, experiment: str, phase: int, cfg: DriftConfig,
                 publish: Callable[[DriftEvent], None]) -> None:
        self.experiment, self.phase, self.cfg = experiment, phase, cfg
        self.publish = publish
        self.state = Path(cfg.state_dir) / experiment
        self.detector: DriftDetector | None = None
        self._collecting: list[dict[str, Any]] = []
        self.windows: dict[str, SlidingWindow] = {}
        self.verdicts: dict[tuple[str, str], bool] = {}
        self.reports: dict[str, DriftReport] = {}
        reference = Reference.load(self.state)
        if reference is not None:
            log.info("drift %s: loaded the persisted reference (%d rows, %s)", experiment, reference.size,
                     reference.source)
        elif cfg.reference_file:
            reference = reference_from_file(cfg.reference_file, tuple(cfg.languages))
            reference.save(self.state)
            log.info("drift %s: reference of %d rows from %s", experiment, reference.size, cfg.reference_file)
        if reference is not None:
            self._use(reference)

    def _use(self, reference: Reference) -> None:
        self.detector = DriftDetector(reference, settings_of(self.cfg))
        metrics.DRIFT_REFERENCE_SIZE.labels(self.experiment).set(reference.size)

    def add(self, arm: str | None, features: Mapping[str, Any]) -> None:
        """Take one exposure's features: into the reference while it is being collected, else the windows."""
        metrics.DRIFT_EXPOSURES.labels(self.experiment).inc()
        if self.detector is None:
            self._collecting.append(dict(features))
            if len(self._collecting) >= self.cfg.reference_size:
                ref = Reference.from_features(self._collecting, f"first {len(self._collecting)} exposures")
                ref.save(self.state)  # a restart must not re-learn the reference from drifted traffic
                self._collecting = []
                self._use(ref)
                log.info("drift %s: reference learned from the first %d exposures", self.experiment, ref.size)
            return
        row, language = feature_row(features)
        for key in (ALL_ARMS, arm or ALL_ARMS) if arm else (ALL_ARMS,):
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = SlidingWindow(self.cfg.window_size, self.cfg.window_step)
            if window.add(row, language):
                self._test(key, window)

    def _test(self, arm: str, window: SlidingWindow) -> None:
        assert self.detector is not None
        numeric, languages = window.contents()
        report = self.detector.test(numeric, languages)
        self.reports[arm] = report
        univariate = self.cfg.test
        for f in report.features:
            detector = "chi2" if f.feature == "language" else univariate
            metrics.DRIFT_P_VALUE.labels(self.experiment, arm, f.feature, detector).set(f.p_adjusted)
            metrics.DRIFT_SCORE.labels(self.experiment, arm, f.feature, detector).set(f.effect)
        metrics.DRIFT_WINDOW_SIZE.labels(self.experiment, arm).set(report.window_size)
        verdicts = {"univariate": report.detected}
        if report.classifier_p is not None:
            metrics.DRIFT_P_VALUE.labels(self.experiment, arm, "all", "classifier").set(report.classifier_p)
            metrics.DRIFT_SCORE.labels(self.experiment, arm, "all", "classifier").set(report.classifier_distance or 0)
            verdicts["classifier"] = report.classifier_p < self.cfg.p_val
        for detector, detected in verdicts.items():
            metrics.DRIFT_DETECTED.labels(self.experiment, arm, detector).set(1 if detected else 0)
            if self.verdicts.get((arm, detector), False) != detected:
                self.verdicts[(arm, detector)] = detected
                drifted = [f.feature for f in report.features if f.drifted] if detector == "univariate" else ["all"]
                log.warning("drift %s (%s, %s): %s %s", self.experiment, arm, detector,
                            "DETECTED in" if detected else "cleared for", drifted or "no feature")
                self.publish(DriftEvent(experiment=self.experiment, phase=self.phase,
                                        arm=None if arm == ALL_ARMS else arm, unit_id=None, detector=detector,
                                        detected=detected, drifted_features=drifted,
                                        window_size=report.window_size))

