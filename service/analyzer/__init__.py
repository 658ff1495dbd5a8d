"""The analyzer: Kafka -> Parquet lake -> KPI SQL (DuckDB) -> statistics -> gauges and the weekly report.

Entry points: ``splitwatch analyzer`` (:func:`splitwatch.service.analyzer.process.run_analyzer`) and
``splitwatch report`` (:func:`splitwatch.service.analyzer.report.build_report`).
"""
