"""Where the KPI SQL runs: DuckDB (embedded, the default) or Spark (``analyzer.engine: spark``).

The statements are written once, in DuckDB's dialect, and parsed into sqlglot's syntax tree. DuckDB
runs them as written. For Spark the tree is changed, never the text: the ``?`` placeholders become
typed literals, ``read_parquet(path)`` becomes a temporary view over the lake's files (registered
with Spark's Parquet reader; the path never enters the SQL), DuckDB's ``quantile_cont`` becomes
Spark's ``percentile`` (the same linear interpolation), numbers with a decimal point become doubles
(as DuckDB computes with them), and the tree is rendered in Spark's dialect by sqlglot. ``CREATE
TEMP TABLE ... AS SELECT`` is materialised (a local checkpoint) under a temporary view of that name.
Only aggregates come back to Python; the statistics engine is the same.

Every dialect difference lives in :func:`to_spark` and :class:`SparkConnection`.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import sqlglot
from sqlglot import exp

ENGINES = ("duckdb", "spark")


class Cursor(Protocol):
    """What a statement returns: its rows."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConnection(Protocol):
    """The part of DuckDB's connection the KPI queries use; Spark's adapter implements the same."""

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any: ...

    def close(self) -> None: ...


def _literal(value: Any) -> exp.Expression:
    """Return a SQL literal for a bound parameter (timestamps in UTC: the Spark session's time zone)."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, Decimal)):
        return exp.Literal.number(str(value))
    if isinstance(value, float):
        return exp.Literal.number(repr(value))
    if isinstance(value, datetime):
        utc = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return exp.cast(exp.Literal.string(utc.isoformat(sep=" ")), exp.DataType.build("TIMESTAMP"))
    if isinstance(value, date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("DATE"))
    if isinstance(value, (list, tuple)):
        return exp.Array(expressions=[_literal(v) for v in value])
    return exp.Literal.string(str(value))


def bind(tree: exp.Expression, parameters: Sequence[Any] | None) -> exp.Expression:
    """Return ``tree`` with its ``?`` placeholders replaced, in the text's order, by literals of ``parameters``."""
    params = list(parameters or [])
    holes = [p for p in tree.find_all(exp.Placeholder, bfs=False) if "this" not in p.args]  # "?": depth-first, in order
    if len(holes) != len(params):
        raise ValueError(f"the statement has {len(holes)} placeholders, {len(params)} parameters were given")
    for hole, value in zip(holes, params, strict=True):
        hole.replace(_literal(value))
    return tree


def to_spark(tree: exp.Expression, view_of: Any) -> str:
    """Return a bound DuckDB statement rendered for Spark SQL (see the module); ``view_of(path)`` names the
    temporary view of a lake glob."""
    def change(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.PercentileCont) and node.args.get("expression") is not None:
            # DuckDB's quantile_cont(x, q): Spark's percentile_cont wants WITHIN GROUP; percentile(x, q)
            # interpolates the same way and takes an array of q
            return exp.Anonymous(this="percentile", expressions=[node.this, node.args["expression"]])
        if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us":
            return exp.Anonymous(this="unix_micros", expressions=node.expressions)  # whole microseconds, both
        if isinstance(node, exp.Table) and isinstance(node.this, exp.ReadParquet):
            arg = node.this.expressions[0]  # bound: a string literal, or an array of them
            paths = tuple(e.name for e in arg.expressions) if isinstance(arg, exp.Array) else arg.name
            return exp.Table(this=exp.to_identifier(view_of(paths)), alias=node.args.get("alias"))
        return node

    def doubles(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal) and not node.is_string and any(c in node.this for c in ".eE"):
            # Spark reads 1.0 as DECIMAL(2,1), and avg() of decimals rounds to a few places; DuckDB's
            # arithmetic on such literals gives doubles: so do they here
            return exp.cast(node.copy(), exp.DataType.build("DOUBLE"))
        return node

    return tree.transform(doubles).transform(change).sql(dialect="spark")


class SparkCursor:
    """The rows of a Spark statement, as DuckDB's cursor returns them (tuples; timestamps in UTC)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = [tuple(_python(v) for v in row) for row in rows]

    def fetchone(self) -> tuple[Any, ...] | None:
        """Return the first row, or None."""
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Return every row."""
        return self._rows


def _python(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # the session's time zone is UTC
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


class SparkConnection:
    """DuckDB-dialect statements run on Spark (see the module). ``tables`` are the temporary views made here."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.tables: set[str] = set()
        self._views: dict[str, str] = {}
        self.object_store: Any = None  # the lake's ObjectStorage, when it lives on one (attach_lake)

    def view_of(self, path: str | tuple[str, ...]) -> str:
        """Return the temporary view over the Parquet files matching ``path`` (a glob, or several), created once."""
        if path not in self._views:
            paths = (path,) if isinstance(path, str) else path
            name = "lake_" + hashlib.sha1("\n".join(paths).encode()).hexdigest()[:12]
            store = self.object_store
            if store is not None and all(p.startswith(store.uri("")) for p in paths):
                df = self._object_store_files(store, [p[len(store.uri("")):] for p in paths])
            else:
                files = sorted({f for p in paths for f in globlib.glob(p)})
                reader = self.spark.read.option("mergeSchema", "true").option("recursiveFileLookup", "true")
                df = reader.parquet(*files) if files else self.spark.createDataFrame([], "event_id STRING")
            df.createOrReplaceTempView(name)
            self._views[path] = name
        return self._views[path]

    def _object_store_files(self, store: Any, patterns: list[str]) -> Any:
        """Return a DataFrame of the lake's files matching ``patterns`` on an object store (spark_lake_source)."""
        import json

        from .lake import SCHEMA
        from .spark_lake_source import SOURCE_NAME, LakeFiles, spark_ddl

        files = sorted({store.key(rel) for pattern in patterns for rel in
                        ([pattern] if "*" not in pattern else store.list(pattern))})
        if not files:
            return self.spark.createDataFrame([], "event_id STRING")
        self.spark.dataSource.register(LakeFiles)
        return (self.spark.read.format(SOURCE_NAME).option("location", store.location)
                .option("files", json.dumps(files)).option("schema", spark_ddl(SCHEMA)).load())

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> SparkCursor:
        """Run one DuckDB-dialect statement on Spark; return its rows."""
        tree = bind(sqlglot.parse_one(sql, read="duckdb"), parameters)
        if isinstance(tree, exp.Drop):
            for table in tree.args.get("tables") or [tree.this]:
                self._drop(table.name)
            return SparkCursor([])
        if isinstance(tree, exp.Create):
            name = tree.this.this.name if isinstance(tree.this, exp.Schema) else tree.this.name
            if tree.expression is None:  # a table with columns and no rows (filled by executemany)
                columns = ", ".join(f"{c.name} {c.args['kind'].sql(dialect='spark')}" for c in tree.this.expressions)
                self._store(name, self.spark.createDataFrame([], columns))
            else:
                self._store(name, self.spark.sql(to_spark(tree.expression, self.view_of)))
            return SparkCursor([])
        return SparkCursor(self.spark.sql(to_spark(tree, self.view_of)).collect())

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> SparkCursor:
        """Run ``INSERT INTO table VALUES (?, ...)`` for every row of ``parameters``."""
        tree = sqlglot.parse_one(sql, read="duckdb")
        if not isinstance(tree, exp.Insert):
            raise ValueError("executemany runs INSERT statements only")
        name = tree.this.name
        rows = [tuple(r) for r in parameters]
        if rows:
            table = self.spark.table(name)
            self._store(name, table.unionByName(self.spark.createDataFrame(rows, table.schema)))
        return SparkCursor([])

    def _store(self, name: str, df: Any) -> None:
        df = df.localCheckpoint(eager=True)  # materialised once, as DuckDB's temp table is
        df.createOrReplaceTempView(name)
        self.tables.add(name)

    def _drop(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)
        self.tables.discard(name)

    def has_table(self, name: str) -> bool:
        """Return True when a temporary table ``name`` was made on this connection."""
        return name in self.tables

    def columns(self, table: str) -> list[str]:
        """Return the columns of a temporary table."""
        return list(self.spark.table(table).columns)

    def close(self) -> None:
        """Drop this connection's temporary views (the Spark session stays, for the next report)."""
        for name in list(self.tables) + list(self._views.values()):
            self.spark.catalog.dropTempView(name)
        self.tables.clear()
        self._views.clear()


def attach_lake(con: Any, lake: Any) -> None:
    """Let ``con`` read ``lake`` when it lives on an object store: DuckDB gets the lake's pyarrow filesystem
    through fsspec (no httpfs extension to download), Spark a Python data source over pyarrow
    (:mod:`.spark_lake_source`). A local lake needs nothing."""
    store = lake.storage
    if not store.object_store:
        return
    if isinstance(con, SparkConnection):
        con.object_store = store
        return
    from fsspec.implementations.arrow import ArrowFSWrapper

    class LakeFilesystem(ArrowFSWrapper):  # type: ignore[misc]
        protocol = (store.scheme,)  # DuckDB routes ``s3://...`` paths to the filesystem of that protocol

    con.register_filesystem(LakeFilesystem(store.fs))


def submitted() -> bool:
    """Return True when this process was started by ``spark-submit`` (which set the gateway's port)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def spark_session(master: str = "local[*]", conf: dict[str, str] | None = None) -> Any:
    """Return a Spark session for the KPI queries: UTC, no UI, the given master and settings.

    Under ``spark-submit`` the master is spark-submit's, and a setting it was given is kept: ``master``
    is ignored and ``conf`` and the defaults here fill in only what is not set.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    # Python workers (the object-store lake's reader) import splitwatch: by default this interpreter, which
    # has it (pyspark's own default is whatever ``python3`` is on the PATH; a cluster sets PYSPARK_PYTHON)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {"spark.ui.showConsoleProgress": "false", "spark.sql.session.timeZone": "UTC",
                "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8", **(conf or {})}
    builder = SparkSession.builder.appName("splitwatch-report")
    if submitted():
        given = SparkConf()  # what spark-submit set (its --conf, --master, spark-defaults.conf)
        settings = {k: v for k, v in settings.items() if not given.contains(k)}
    else:
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def connect(engine: str = "duckdb", master: str = "local[*]", conf: dict[str, str] | None = None) -> Any:
    """Return a connection the KPI queries run on: DuckDB's, or Spark's adapter."""
    if engine == "duckdb":
        import duckdb

        return duckdb.connect()
    if engine == "spark":
        return SparkConnection(spark_session(master, conf))
    raise ValueError(f"unknown engine {engine!r}; engines: {list(ENGINES)}")
