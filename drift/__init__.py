"""splitwatch's drift detector: prompt features against a reference, and each arm's answers
against its own first answers.

Entry point: ``splitwatch drift`` (:func:`splitwatch.drift.process.run_drift`).
"""
