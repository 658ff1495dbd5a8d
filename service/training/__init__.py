"""Training-run evidence: learning curves read from what the tools write, and what they say
(convergence, over-fitting, instability, the best checkpoint): ``splitwatch training``."""
