"""splitwatch's processes and the contracts they share (docs/architecture.md).

One folder per stage of the data flow: ``proxy`` (requests -> assignment -> upstream), ``delivery``
(events -> spool -> Kafka), ``analyzer`` (Kafka -> lake -> KPIs -> statistics -> gauges, report) and
``local`` (the demo and test tooling). The shared contracts sit here: ``config``, ``events``,
``metrics``, ``features``, ``logs``, ``files``, and the ``cli`` that starts every process.
"""

from .config import Config, ConfigError, load_config
from .events import ExposureEvent, OutcomeEvent, ResponseEvent, parse_event
from .proxy.assignment import Assignment, bucket_of

__all__ = [
    "Assignment",
    "Config",
    "ConfigError",
    "ExposureEvent",
    "OutcomeEvent",
    "ResponseEvent",
    "bucket_of",
    "load_config",
    "parse_event",
]
