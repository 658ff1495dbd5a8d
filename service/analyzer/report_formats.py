"""The report's renderers by format name (``splitwatch report --format``)."""

from __future__ import annotations

from collections.abc import Callable

from .report import Report
from .report_html import to_html
from .report_json import to_json
from .report_markdown import to_markdown

RENDERERS: dict[str, Callable[[Report], str]] = {"md": to_markdown, "html": to_html, "json": to_json}
