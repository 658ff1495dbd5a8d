"""The drift engine: which library computes the detectors' statistics (``drift.engine``).

- ``scipy`` (the default, :mod:`.scipy_engine`): scipy and scikit-learn, BSD-licensed;
- ``alibi`` (:mod:`.alibi_adapter`): alibi-detect 0.13, under the Business Source License 1.1
  (production use needs a licence from Seldon), and the way to its other detectors (MMD on
  embeddings). ``pip install 'splitwatch[alibi]'``; it holds numpy below 2.

Both expose ``univariate``, ``categorical_many`` and ``classifier`` with the same arguments and give the
same p-values on the same windows (tests/test_drift_engines.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

DriftEngine = Literal["scipy", "alibi"]
ENGINES: dict[str, str] = {"scipy": "scipy_engine", "alibi": "alibi_adapter"}


class EngineUnavailable(RuntimeError):
    """The configured drift engine's library is not installed."""


@dataclass(frozen=True)
class UnivariateResult:
    """Per-feature p-values (uncorrected: the caller corrects across every column) and test statistics."""

    p_values: np.ndarray
    distances: np.ndarray


def engine(name: str) -> ModuleType:
    """Return the module of drift engine ``name``; raise EngineUnavailable with the install line when
    its library is missing."""
    if name not in ENGINES:
        raise ValueError(f"unknown drift engine {name!r}: {' or '.join(ENGINES)}")
    try:
        return importlib.import_module(f"{__package__}.{ENGINES[name]}")
    except ImportError as exc:
        extra = "alibi" if name == "alibi" else "drift"
        raise EngineUnavailable(f"drift.engine {name} needs pip install 'splitwatch[{extra}]' ({exc})") from None


def require(name: str, classifier: bool = False) -> None:
    """Raise EngineUnavailable (with the install line) unless engine ``name`` can run, with scikit-learn
    when the domain classifier is on: checked when the detector starts, not at its first window."""
    engine(name)
    if classifier:
        try:
            importlib.import_module("sklearn")
        except ImportError as exc:
            raise EngineUnavailable(f"drift.classifier needs pip install 'splitwatch[drift]' ({exc})") from None
