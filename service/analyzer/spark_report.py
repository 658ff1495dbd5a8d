"""``spark-submit spark_report.py --config FILE --experiment KEY ...``: the weekly report as a Spark application.

The main file of the chart's ``ScheduledSparkApplication`` (spark-operator) and of any
``spark-submit``: the arguments are ``splitwatch report``'s, and the engine is Spark. Under
spark-submit the session is the one spark-submit configured (its master, executors and settings:
:func:`.engines.spark_session` leaves them alone); ``analyzer.spark.conf`` fills in only what it did
not set. Written with absolute imports, so that it runs as a file, outside the package.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``splitwatch report`` on Spark with ``argv`` (default: the command line); return its exit code."""
    from splitwatch.service.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--engine" not in args:
        args += ["--engine", "spark"]
    return cli_main(["report", *args])


if __name__ == "__main__":
    raise SystemExit(main())
