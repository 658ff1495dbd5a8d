"""The reference a drift detector compares windows against: feature rows and languages, persisted."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from splitwatch.service.features import LANGUAGES, NUMERIC_FEATURES, detect_language, prompt_features


def feature_row(features: Mapping[str, Any]) -> tuple[list[float], str]:
    """Return the numeric row (NUMERIC_FEATURES order) and the language of one exposure's features."""
    return [float(features.get(name, 0.0)) for name in NUMERIC_FEATURES], str(features.get("language", "und"))


def features_of_text(text: str, languages: tuple[str, ...] = LANGUAGES) -> dict[str, Any]:
    """Return the features the proxy would put on an exposure for a one-message chat with ``text``.

    ``languages``: the config's ``drift.languages``, the list the proxy's identifier chooses among.
    """
    f: dict[str, Any] = dict(prompt_features({"messages": [{"role": "user", "content": text}]}))
    f["language"] = detect_language(text, languages)
    return f


@dataclass
class Reference:
    """Feature rows of the reference traffic, their languages, where they came from."""

    numeric: np.ndarray
    languages: list[str]
    source: str
    created_at: str

    @classmethod
    def from_features(cls, rows: Iterable[Mapping[str, Any]], source: str) -> Reference:
        """Return a reference built from exposure feature dicts."""
        numeric, languages = [], []
        for f in rows:
            row, lang = feature_row(f)
            numeric.append(row)
            languages.append(lang)
        return cls(np.asarray(numeric, dtype=float).reshape(-1, len(NUMERIC_FEATURES)), languages, source,
                   datetime.now(UTC).isoformat())

    @classmethod
    def from_texts(cls, texts: Iterable[str], source: str, languages: tuple[str, ...] = LANGUAGES) -> Reference:
        """Return a reference built from prompts (a reference file of real user prompts)."""
        return cls.from_features((features_of_text(t, languages) for t in texts), source)

    @property
    def size(self) -> int:
        """Return the number of reference rows."""
        return int(self.numeric.shape[0])

    def save(self, directory: str | Path) -> None:
        """Write the reference to ``directory`` (atomically: a restart never sees half of it)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "reference.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, numeric=self.numeric, languages=np.asarray(self.languages))
        os.replace(tmp, d / "reference.npz")
        meta = {"source": self.source, "created_at": self.created_at, "rows": self.size,
                "features": list(NUMERIC_FEATURES)}
        (d / "reference.json.tmp").write_text(json.dumps(meta, indent=2))
        os.replace(d / "reference.json.tmp", d / "reference.json")

    @classmethod
    def load(cls, directory: str | Path) -> Reference | None:
        """Return the reference saved in ``directory``, or None when there is none."""
        d = Path(directory)
        if not (d / "reference.npz").exists():
            return None
        meta = json.loads((d / "reference.json").read_text())
        if meta.get("features") != list(NUMERIC_FEATURES):
            raise ValueError(f"the reference in {d} was built with other features: {meta.get('features')}")
        data = np.load(d / "reference.npz")
        return cls(data["numeric"], [str(x) for x in data["languages"]], meta["source"], meta["created_at"])
