"""The checks of ``splitwatch data`` (rules and defaults in docs/data.md).

- **Exact duplicates**: examples whose input and target are equal after normalisation (case,
  punctuation, articles, spaces: the SQuAD normalisation the eval uses).
- **Near duplicates**: datasketch's MinHash (``num_perm`` 128) of each input's word 3-shingles (the
  whole input when shorter), grouped with MinHash LSH at an estimated Jaccard similarity of at least
  ``near_threshold`` (default 0.8); groups are the connected pairs.
- **Conflicting labels**: a group of exact or near duplicate inputs whose labels (else targets) differ.
- **Balance**: each label's count and share, the largest-to-smallest ratio and the normalised entropy
  (1: perfectly even).
- **Empty and over-long**: an empty input or target; more than ``max_words`` words in input and target.
- **Contamination**: an eval case is contaminated when at least ``overlap`` (default 0.5) of its
  question's word ``ngram``-grams (default 8) occur in the tuning files' inputs and targets; a
  question shorter than one n-gram is contaminated when it occurs whole (on word boundaries) in a
  tuning text. A chat case's question is its last user message: a system prompt that
  every case shares would make every case look copied.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from ..evaluation.scoring import normalise
from .examples import Example

NUM_PERM = 128
SHINGLE = 3


@dataclass
class DataOptions:
    """The checks' thresholds."""

    near_threshold: float = 0.8
    ngram: int = 8
    overlap: float = 0.5
    max_words: int = 2048


@dataclass
class DataFindings:
    """What the checks found: groups and lists of example keys (``file:id``), counts and the label balance."""

    files: dict[str, int]
    bad_lines: list[str]
    exact_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[list[str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    imbalance_ratio: float | None = None
    label_entropy: float | None = None
    empty: list[str] = field(default_factory=list)
    over_long: list[str] = field(default_factory=list)
    contaminated: list[dict[str, Any]] = field(default_factory=list)
    eval_cases: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def contaminated_share(self) -> float | None:
        """Return the share of eval cases contaminated (None without eval files)."""
        return len(self.contaminated) / self.eval_cases if self.eval_cases else None

    def counts(self) -> dict[str, int]:
        """Return each finding's count: examples in duplicate groups beyond the first, and so on."""
        return {"examples": sum(self.files.values()), "bad_lines": len(self.bad_lines),
                "exact_duplicates": sum(len(g) - 1 for g in self.exact_duplicates),
                "near_duplicates": sum(len(g) - 1 for g in self.near_duplicates),
                "conflicting_groups": len(self.conflicts), "empty": len(self.empty), "over_long": len(self.over_long),
                "contaminated": len(self.contaminated), "eval_cases": self.eval_cases}

    def as_dict(self) -> dict[str, Any]:
        """Return the findings as plain values."""
        return {**asdict(self), "counts": self.counts(), "contaminated_share": self.contaminated_share}


def _groups(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])


def near_duplicate_groups(examples: list[Example], threshold: float) -> list[list[int]]:
    """Return groups of examples (indices) whose inputs' MinHash Jaccard estimate is at least ``threshold``."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    hashes = []
    for i, ex in enumerate(examples):
        m = MinHash(num_perm=NUM_PERM)
        for s in _ngrams(ex.input, SHINGLE):
            m.update(s.encode("utf-8"))
        hashes.append(m)
        lsh.insert(str(i), m)
    pairs = []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            j = int(j)
            if j > i and m.jaccard(hashes[j]) >= threshold:  # LSH finds candidates; the estimate decides
                pairs.append((i, j))
    return _groups(pairs, len(examples))


def _ngrams(text: str, n: int, normalised: bool = False) -> set[str]:
    """Return the text's word n-grams after normalisation (the whole text when it is shorter than n)."""
    words = (text if normalised else normalise(text)).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _duplicates(examples: list[Example], opts: DataOptions, f: DataFindings) -> None:
    """Add the set's exact duplicates, near duplicates (2 or more distinct inputs) and conflicting labels."""
    by_exact: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_input: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_exact[(normalise(ex.input), normalise(ex.target or ""))].append(i)
        by_input[normalise(ex.input)].append(i)
    f.exact_duplicates += [[examples[i].key for i in g] for g in by_exact.values() if len(g) > 1]
    near = near_duplicate_groups(examples, opts.near_threshold)
    f.near_duplicates += [[examples[i].key for i in g] for g in near
                          if len({normalise(examples[i].input) for i in g}) > 1]
    seen: set[frozenset[int]] = set()
    for group in [*by_input.values(), *near]:
        if len(group) < 2 or frozenset(group) in seen:
            continue
        seen.add(frozenset(group))
        labels = {examples[i].label if examples[i].label is not None else normalise(examples[i].target or "")
                  for i in group}
        if len(labels) > 1:
            f.conflicts.append({"examples": [examples[i].key for i in group], "labels": len(labels)})


def _label_balance(examples: list[Example], f: DataFindings) -> None:
    """Set the label counts, the imbalance ratio and the normalised label entropy."""
    counts = Counter(ex.label for ex in examples if ex.label is not None)
    if not counts:
        return
    f.labels = dict(counts.most_common())
    f.imbalance_ratio = max(counts.values()) / min(counts.values())
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    f.label_entropy = entropy / math.log(len(counts)) if len(counts) > 1 else 0.0


def _contamination(tuning: list[Example], evals: list[Example], opts: DataOptions, f: DataFindings) -> None:
    """Add the eval cases whose question shares at least ``opts.overlap`` of its n-grams with the tuning set."""
    seen_grams: set[str] = set()
    texts = []
    for ex in tuning:
        for text in (ex.input, ex.target or ""):
            texts.append(normalise(text))
            seen_grams |= _ngrams(texts[-1], opts.ngram, normalised=True)
    corpus = " " + " | ".join(texts) + " "
    for ex in evals:
        words = normalise(ex.asked).split()  # the case's own question, not a system prompt all cases share
        if not words:
            continue
        if len(words) < opts.ngram:  # shorter than one n-gram: the whole question, found in a tuning text
            share = float(f" {' '.join(words)} " in corpus)
        else:
            grams = _ngrams(" ".join(words), opts.ngram, normalised=True)
            share = len(grams & seen_grams) / len(grams)
        if share >= opts.overlap:
            f.contaminated.append({"case": ex.key, "overlap": share})


def check(tuning: list[Example], evals: list[Example], bad_lines: list[str], files: dict[str, int],
          opts: DataOptions) -> DataFindings:
    """Return the findings of every check (see the module) on the tuning examples and the eval cases."""
    f = DataFindings(files, bad_lines, eval_cases=len(evals), options=asdict(opts))
    for group in (tuning, evals):  # within each set; between them is contamination (below)
        _duplicates(group, opts, f)
    _label_balance(tuning or evals, f)  # the tuning set's, if any
    for ex in tuning + evals:
        if not ex.input.strip() or (ex.target is not None and not ex.target.strip()):
            f.empty.append(ex.key)
        if len(ex.input.split()) + len((ex.target or "").split()) > opts.max_words:
            f.over_long.append(ex.key)
    if evals and tuning:
        _contamination(tuning, evals, opts, f)
    return f
