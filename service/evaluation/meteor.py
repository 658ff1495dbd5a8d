"""METEOR (nltk's ``meteor_score``), with WordNet read from the system, never downloaded.

nltk's METEOR matches exact words, Porter stems and WordNet synonyms. nltk would download WordNet
at run time; here it reads the WordNet 3.0 database files installed by a package: Debian's
``wordnet-base`` (``/usr/share/wordnet``), or a directory named by ``SPLITWATCH_WORDNET``. Debian's
package lacks one small file nltk's reader opens, ``lexnames`` (the 45 lexicographer file names,
fixed by WordNet 3.0, lexnames(5)): the reader is handed that list when the directory lacks it.
Without WordNet the metric is unavailable, with a message saying what to install, never a number
computed without synonyms.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

SYSTEM_WORDNET = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
                 "index.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# WordNet 3.0's lexicographer files in their numbered order (lexnames(5)); nltk checks the numbering
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_SYNTACTIC = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class MeteorUnavailable(RuntimeError):
    """No WordNet database on this machine (the message says what to install)."""


def wordnet_source() -> Path:
    """Return the directory holding the WordNet 3.0 database files; raise MeteorUnavailable when none."""
    chosen = os.environ.get("SPLITWATCH_WORDNET")
    root = Path(chosen) if chosen else SYSTEM_WORDNET
    missing = [f for f in WORDNET_FILES if not (root / f).is_file()]
    if missing:
        where = f"SPLITWATCH_WORDNET={chosen}" if chosen else str(SYSTEM_WORDNET)
        raise MeteorUnavailable(f"METEOR needs WordNet 3.0 ({where} lacks {missing[0]}): install Debian's "
                                "wordnet-base (apt-get install wordnet-base) or point SPLITWATCH_WORDNET at a "
                                "directory of its database files")
    return root


def _lexnames() -> str:
    """Return the ``lexnames`` file's text (number, name, syntactic category per line, as WordNet ships it)."""
    return "".join(f"{i:02d}\t{name}\t{_SYNTACTIC[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


@cache
def wordnet() -> Any:
    """Return nltk's WordNet reader over the system's database (built once per process)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class SystemWordNet(WordNetCorpusReader):  # type: ignore[misc]
        """nltk's reader, given ``lexnames`` from :data:`LEXNAMES` when the system's files lack it."""

        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (source / "lexnames").is_file():
                return io.StringIO(_lexnames())
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # nltk maps other WordNet versions onto 3.0 (through its downloaded copy); this is 3.0

    source = wordnet_source().resolve()
    if str(source) not in nltk.data.path:  # nltk opens only paths under nltk.data.path (its documented opt-in)
        nltk.data.path.append(str(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the multilingual functions are not available": not used here
        reader = SystemWordNet(str(source), None)
    if reader.get_version() != "3.0":
        raise MeteorUnavailable(f"METEOR here is computed with WordNet 3.0; {source} holds {reader.get_version()}")
    return reader


def meteor(answer: str, reference: str) -> float:
    """Return nltk's METEOR (0-1, its defaults: alpha 0.9, beta 3, gamma 0.5) of the answer against the
    reference, both split on whitespace after lower-casing (nltk's own examples pre-tokenise so)."""
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.lower().split()], answer.lower().split(), wordnet=wordnet()))


def meteor_scores(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """Return each case's METEOR."""
    return [meteor(a, r) for a, r in zip(answers, references, strict=True)]
