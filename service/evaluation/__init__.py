"""Offline evaluation, before any user: ``splitwatch eval`` sends a fixed test set to every arm of an
experiment and compares each arm with the control on the same cases (paired tests).

The stages, one module each: ``dataset`` (the JSONL test set, bad lines by number and field),
``runner`` (the calls, through the proxy's upstream clients), ``store`` (results on disk, resumable),
``scoring`` (per-case scores and corpus figures: sacrebleu, rouge-score, scikit-learn), ``compare``
(per-arm figures, paired tests, correction, verdicts), ``report`` (Markdown, HTML, JSON) and ``run``
(the command). docs/eval.md describes it for users.
"""
