"""splitwatch's drift detector: prompt-feature distributions against a reference.

Entry point: ``splitwatch drift`` (:func:`splitwatch.drift.process.run_drift`).
"""
