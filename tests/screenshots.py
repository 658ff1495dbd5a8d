"""Pages and terminals as a person sees them: headless Chromium at a set width.

Used by the tests (does a page fit 1,400 px? is its verdict on top?) and, run as a script, to refresh
the screenshots kept in docs/ from a demo run::

    COLUMNS=80 .venv/bin/splitwatch demo --workdir /tmp/demo > /tmp/demo.txt
    python -m tests.screenshots /tmp/demo /tmp/demo.txt docs/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run"]
# the page's width, plus how far any box that scrolls sideways on its own (a wide table's wrapper) overflows
PROBE = ("<script>var over = 0; document.querySelectorAll('.scroll').forEach(function (e) {"
         "over = Math.max(over, e.scrollWidth - e.clientWidth); });"
         "document.body.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth + over))"
         "</script>")


def page_width(page: Path, width: int = 1400) -> int:
    """Return the width (px) the page needs in a window ``width`` px wide: more than ``width`` means something
    scrolls sideways (the page, or a table in its own scrolling box)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"  # the page as it is, with a script that reports its own width
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--window-size={width},1000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-scroll-width="(\d+)"', dom)
    if m is None:
        raise AssertionError(f"chromium did not lay out {page}: {dom[:500]}")
    return int(m.group(1))


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1600) -> Path:
    """Write a PNG of the page's top ``height`` px in a window ``width`` px wide; return its path."""
    subprocess.run([CHROMIUM, *FLAGS, f"--window-size={width},{height}", f"--screenshot={png}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return png


def terminal_screenshot(text: str, png: Path, columns: int = 80) -> Path:
    """Write a PNG of a terminal's text (ANSI colours allowed) at ``columns`` wide; return its path."""
    from rich.console import Console
    from rich.text import Text

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "sink", "w") as sink:
        console = Console(record=True, width=columns, file=sink, force_terminal=True)
        console.print(Text.from_ansi(text), overflow="fold")  # a terminal folds a long line at its width
        page = Path(tmp) / "terminal.html"
        page.write_text(console.export_html(inline_styles=True), encoding="utf-8")
        rows = text.count("\n") + 2
        screenshot(page, png, width=columns * 9 + 60, height=min(6000, rows * 18 + 60))
    return png


def main(argv: list[str]) -> int:
    """Refresh docs/'s screenshots from a demo's output directory and its terminal session."""
    demo, terminal, docs = Path(argv[0]), Path(argv[1]), Path(argv[2])
    screenshot(demo / "report.html", docs / "report-page.png")
    screenshot(demo / "eval" / "report.html", docs / "eval-page.png")
    terminal_screenshot(terminal.read_text(encoding="utf-8"), docs / "demo-80-columns.png")
    for name in ("report-page.png", "eval-page.png", "demo-80-columns.png"):
        print(docs / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
