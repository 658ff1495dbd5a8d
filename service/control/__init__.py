"""Experiment state on the control topic: what every proxy worker and the rollout guard agree on."""
