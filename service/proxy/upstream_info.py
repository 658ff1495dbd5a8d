"""The info series that put the model servers' own metrics beside each arm (docs/serving.md).

For every arm of every experiment, ``splitwatch_upstream_info`` maps each scrape target of its model
server to the experiment, arm and model, and ``splitwatch_upstream_gpu_info`` each of its GPUs as the
DCGM exporter labels them; a stated model size becomes two gauges. A reload sets the series it no longer
holds to 0 (prometheus-client's multiprocess files cannot drop a label set), and the shipped queries
keep only the series equal to 1.
"""

from __future__ import annotations

from .. import metrics
from ..config import Config, ModelSizeConfig

Labels = tuple[str, ...]


def info_series(config: Config) -> tuple[set[Labels], set[Labels], dict[Labels, ModelSizeConfig]]:
    """Return the label sets of the upstream info and GPU info gauges, and the stated model sizes by the
    labels of their gauges, that the config calls for."""
    info: set[Labels] = set()
    gpus: set[Labels] = set()
    sizes: dict[Labels, ModelSizeConfig] = {}
    for exp in config.experiments:
        for i, arm in enumerate(exp.arms):
            up = arm.upstream
            role = "control" if i == 0 else "candidate"
            serving = up.serving
            if serving is None:
                continue
            info |= {(exp.key, arm.name, role, up.base_url, up.model, t) for t in serving.targets}
            gpus |= {(exp.key, arm.name, role, up.base_url, g.target, g.gpu) for g in serving.gpus}
            if serving.model_size is not None:
                sizes[(exp.key, arm.name, up.model, serving.model_size.dtype or "unknown")] = serving.model_size
    return info, gpus, sizes


class UpstreamInfo:
    """Sets the info gauges from the config in force; remembers what it set, to zero it on a reload."""

    def __init__(self) -> None:
        self._info: set[Labels] = set()
        self._gpus: set[Labels] = set()
        self._sizes: set[Labels] = set()

    def export(self, config: Config) -> None:
        """Set every info series of ``config`` to 1 (the sizes to their values), and the dropped ones to 0."""
        info, gpus, sizes = info_series(config)
        for labels in self._info - info:
            metrics.UPSTREAM_INFO.labels(*labels).set(0)
        for labels in self._gpus - gpus:
            metrics.UPSTREAM_GPU_INFO.labels(*labels).set(0)
        for labels in self._sizes - sizes.keys():
            metrics.UPSTREAM_MODEL_PARAMETERS.labels(*labels).set(0)
            metrics.UPSTREAM_MODEL_BYTES.labels(*labels).set(0)
        for labels in info:
            metrics.UPSTREAM_INFO.labels(*labels).set(1)
        for labels in gpus:
            metrics.UPSTREAM_GPU_INFO.labels(*labels).set(1)
        for labels, size in sizes.items():
            if size.parameters is not None:
                metrics.UPSTREAM_MODEL_PARAMETERS.labels(*labels).set(size.parameters)
            if size.bytes is not None:
                metrics.UPSTREAM_MODEL_BYTES.labels(*labels).set(size.bytes)
        self._info, self._gpus, self._sizes = info, gpus, set(sizes)
