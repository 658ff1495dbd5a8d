"""Features of a prompt's text computed in the event shipper (off the request path), never the text.

The worker hands the shipper the start of the last user message (:data:`TEXT_SAMPLE_CHARS`) in
memory; the shipper adds these features to the exposure event and drops the text: it is never
spooled, sent or logged. Definitions: docs/features.md.
"""

from __future__ import annotations

import re

TEXT_SAMPLE_CHARS = 4000
"""The shipper reads at most this much of the last user message: a pasted traceback or a long
question fits; a pasted document is judged by its start."""

# Code without a fence: lines that only code has. Each alternative is anchored at a line start or
# needs punctuation prose does not use, so a sentence that mentions "import" or "class" is not code.
_CODE_LINE = re.compile(
    r"```"
    r"|^[ \t]*(?:def|class|import|from [\w.]+ import|function|public|private|return|const|let|var|#include"
    r"|SELECT|INSERT|UPDATE [\w.]+ SET|CREATE TABLE)\b[^\n]*[(:{;=,*]"
    r"|^[ \t]*[\w.\[\]]+ ?(?:=|\+=|==|=>|->) ?[^\n]*[(\[{\"'0-9][^\n]*$"
    r"|[{};][ \t]*$"
    r"|^[ \t]*(?://|#!|/\*)"
    r"|\w\([^()\n]*\)[ \t]*[;{:]?[ \t]*$",
    re.M)
# Stack traces of the common runtimes: Python, Java/JVM, JavaScript/Node, .NET, Go, Rust.
_TRACE = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^[ \t]*File \"[^\"\n]+\", line \d+"
    r"|^[ \t]+at [\w$.<>]+\([\w$.]*(?:\.java|\.kt|\.scala)?:?\d*\)"
    r"|^[ \t]+at (?:async )?[\w$.<>]+ \(?[^\s()]+:\d+:\d+\)?"
    r"|^[ \t]+at [\w.`<>]+\(.*\) in .+:line \d+"
    r"|^goroutine \d+ \[\w+"
    r"|^thread '[^']*' panicked at"
    r"|^(?:[\w.]+(?:Error|Exception)|panic): .+$",
    re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")  # "x.py", "3.5" do not end a sentence: no space follows
# An instruction: the sentence starts with a verb in the imperative (English; a few frequent verbs,
# optionally after "please", "then"...). Other languages count as statements.
_IMPERATIVE = re.compile(
    r"^(?:(?:please|then|now|also|and|so|first|next|finally|just|kindly)[ ,]+)*"
    r"(?:write|explain|give|tell|list|make|create|show|help|fix|summari[sz]e|translate|generate"
    r"|describe|find|check|compare|rewrite|draft|convert|calculate|suggest|send|add|remove|update|cancel"
    r"|change|book|let me|do(?:n'?t| not)?(?! (?:you|i|we|they|he|she|it)\b)|stop|provide|build|implement"
    r"|debug|review|improve|correct|classify)\b",
    re.I)
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+\.\S+", re.I)
# A number: digits (with . or , groups) not glued to a word or a dot before them. Written to start with its
# digit, the lookbehind checking the character before it, so that the regex engine skips to digits
# instead of trying every position: the same matches as r"(?<![\w.])\d+(?:[.,]\d+)*" (tests/test_features.py).
_NUMBER = re.compile(r"\d(?<![\w.]\d)\d*(?:[.,]\d+)*")
# Patterns that look like personal data; counted, never kept. Emails; phone numbers (8+ digits with
# separators, optionally international); card-like numbers (13-19 digits in groups); IBAN-like.
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PII_NUMBER = re.compile(
    r"(?<![\w+])\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w)"
    r"|\b(?:\d{4}[ -]?){3}\d{1,7}\b"
    r"|\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")
# Cheap substring tests (C speed) before each regex: most prompts have no trace, link or digit, and
# the regex scan is what costs (docs/benchmarks.md).
_TRACE_HINTS = ("Traceback", 'File "', "  at ", "\tat ", "goroutine ", "panicked at", "Error: ", "Exception: ",
                "panic: ")
_DIGITS = "0123456789"
# A letter or digit: ``str.isalnum()`` of one character (sre's Unicode word class is isalnum() or "_"),
# searched in C instead of a generator over the sentence's characters.
_ALNUM = re.compile(r"[^\W_]")
_DIGIT = re.compile(r"\d")


def pii_number_count(text: str) -> int:
    """Return ``len(_PII_NUMBER.findall(text))``, trying the pattern only where one of its matches can start.

    Each alternative has a digit among its first three characters (a digit; "+" and a digit; two capitals
    and a digit), so a match starts at a digit or at one of the two characters before one. Those
    positions are tried left to right, each once, and the search goes on after a match's end, as
    ``findall`` does. ``match`` at a position reads the characters before it, so the lookbehind and
    ``\\b`` see what ``findall`` sees. ``findall`` tries every position of the text: on a 2,000-character
    prompt this was the costliest of the shipper's features (docs/benchmarks.md, issue 32).
    """
    count = end = 0  # end: where the last match ended; nothing before it is tried again
    for digit in _DIGIT.finditer(text):
        q = digit.start()
        for p in range(max(q - 2, end), q + 1):
            m = _PII_NUMBER.match(text, p)
            end = p + 1
            if m is not None:
                count += 1
                end = m.end()
                break
    return count


def sentences(text: str) -> list[str]:
    """Return the text's sentences (split after . ! ? followed by a space, and at newlines), stripped,
    without those that have no letter or digit."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if _ALNUM.search(s)]


def text_features(text: str) -> dict[str, float]:
    """Return the shipper's features of a prompt's last user message (docs/features.md)."""
    text = text[:TEXT_SAMPLE_CHARS]
    parts = sentences(text)
    n = len(parts)
    questions = sum(1 for s in parts if s.endswith("?"))
    imperatives = sum(1 for s in parts if not s.endswith("?") and _IMPERATIVE.match(s))
    trace = any(h in text for h in _TRACE_HINTS) and _TRACE.search(text) is not None
    links = _URL.findall(text) if "http" in text or "www." in text else []
    digits = any(d in text for d in _DIGITS)
    pii = len(_EMAIL.findall(text)) if "@" in text else 0
    if digits:
        pii += pii_number_count(text)
    return {
        "has_code": 1.0 if trace or _CODE_LINE.search(text) else 0.0,
        "has_stack_trace": 1.0 if trace else 0.0,
        "question_share": questions / n if n else 0.0,
        "imperative_share": imperatives / n if n else 0.0,
        "url_count": float(len(links)),
        "number_count": float(len(_NUMBER.findall(_URL.sub(" ", text) if links else text))) if digits else 0.0,
        "pii_count": float(pii),
    }
