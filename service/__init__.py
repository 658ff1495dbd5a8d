"""splitwatch's routing proxy: sticky A/B assignment in front of OpenAI-compatible model endpoints."""

from .assignment import Assignment, bucket_of
from .config import Config, ConfigError, load_config
from .events import ExposureEvent, OutcomeEvent, ResponseEvent, parse_event

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
