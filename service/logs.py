"""Logging set-up shared by every splitwatch process (and each proxy worker)."""

from __future__ import annotations

import logging


def configure_logging(worker: int | None = None) -> None:
    """Log INFO and up to stderr, with the worker index when there is one; quiet chatty libraries."""
    who = "" if worker is None else f" worker-{worker}"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{who} %(levelname)s %(name)s: %(message)s")
    # httpx logs every upstream request at INFO; kafka-python every reconnect attempt;
    # matplotlib logs every categorical axis it builds at INFO (24 lines per HTML report).
    for noisy in ("httpx", "kafka", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's connection manager logs every failed connection attempt at ERROR (several lines a
    # second per client while a broker is down). splitwatch logs Kafka's reachability itself, one line
    # per change (shipper, control topic, analyzer and drift loops), with the error.
    logging.getLogger("kafka.net").setLevel(logging.CRITICAL)
