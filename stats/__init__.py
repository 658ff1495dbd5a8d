"""splitwatch's statistics engine: KPI significance from per-arm sufficient statistics (issue #4)."""
