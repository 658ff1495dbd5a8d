"""The reference a drift detector compares windows against: feature rows, languages and topic
sketches of prompts, persisted."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from splitwatch.service.features.prompt import LANGUAGES, NUMERIC_FEATURES, prompt_features, shipper_features
from splitwatch.service.features.topic_sketch import SKETCH_DIMS, decode_sketch

FORMAT = 2  # 2: topic sketches and the shipper's features (format 1 had ten numeric features only)


class ReferenceMismatch(ValueError):
    """A persisted reference was built with other features than this version computes."""


def feature_row(features: Mapping[str, Any]) -> tuple[list[float], str, list[float]]:
    """Return the numeric row (NUMERIC_FEATURES order), the language and the topic vector of one
    exposure's features (a missing feature reads 0, a missing topic all zeros)."""
    row = []
    for name in NUMERIC_FEATURES:
        v = features.get(name, 0.0)
        row.append(float(v) if isinstance(v, int | float) else 0.0)
    topic = features.get("topic")
    vec = decode_sketch(topic) if isinstance(topic, str) else None
    return row, str(features.get("language", "und")), vec if vec is not None else [0.0] * SKETCH_DIMS


def features_of_text(text: str, languages: tuple[str, ...] = LANGUAGES) -> dict[str, Any]:
    """Return the features an exposure would carry for a one-message chat with ``text``: the
    worker's and its event shipper's (``languages``: the config's ``drift.languages``)."""
    f: dict[str, Any] = dict(prompt_features({"messages": [{"role": "user", "content": text}]}))
    f.update(shipper_features(text, languages))
    return f


@dataclass
class Reference:
    """Feature rows of the reference traffic, their languages and topic sketches, where they came from."""

    numeric: np.ndarray
    languages: list[str]
    topics: np.ndarray
    source: str
    created_at: str

    @classmethod
    def from_features(cls, rows: Iterable[Mapping[str, Any]], source: str) -> Reference:
        """Return a reference built from exposure feature dicts."""
        numeric, languages, topics = [], [], []
        for f in rows:
            row, lang, topic = feature_row(f)
            numeric.append(row)
            languages.append(lang)
            topics.append(topic)
        return cls(np.asarray(numeric, dtype=float).reshape(-1, len(NUMERIC_FEATURES)), languages,
                   np.asarray(topics, dtype=np.float32).reshape(-1, SKETCH_DIMS), source,
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
            np.savez_compressed(f, numeric=self.numeric, languages=np.asarray(self.languages), topics=self.topics)
        os.replace(tmp, d / "reference.npz")
        meta = {"format": FORMAT, "source": self.source, "created_at": self.created_at, "rows": self.size,
                "features": list(NUMERIC_FEATURES), "topic_dims": SKETCH_DIMS}
        (d / "reference.json.tmp").write_text(json.dumps(meta, indent=2))
        os.replace(d / "reference.json.tmp", d / "reference.json")

    @classmethod
    def load(cls, directory: str | Path) -> Reference | None:
        """Return the reference saved in ``directory``, or None when there is none.

        Raises ReferenceMismatch when it was built with other features (an older version).
        """
        d = Path(directory)
        if not (d / "reference.npz").exists():
            return None
        meta = json.loads((d / "reference.json").read_text())
        if meta.get("features") != list(NUMERIC_FEATURES) or meta.get("topic_dims") != SKETCH_DIMS:
            raise ReferenceMismatch(f"the reference in {d} was built with other features: {meta.get('features')}")
        data = np.load(d / "reference.npz")
        return cls(data["numeric"], [str(x) for x in data["languages"]], data["topics"], meta["source"],
                   meta["created_at"])

    @staticmethod
    def retire(directory: str | Path) -> Path:
        """Move a persisted reference aside (``reference.retired-<time>``); return where it went."""
        d = Path(directory)
        dest = d / f"reference.retired-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("reference.npz", "reference.json"):
            if (d / name).exists():
                os.replace(d / name, dest / name)
        return dest
