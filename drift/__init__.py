"""splitwatch's drift detector: prompt-feature distributions against a reference (issue #6)."""
