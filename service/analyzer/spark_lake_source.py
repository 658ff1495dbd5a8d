"""The lake on an object store, read by Spark through pyarrow: a Python data source (Spark 4's API).

Spark reads ``s3a://`` itself only with the hadoop-aws connector and the AWS SDK on its class path
(jars from Maven, not in pyspark's wheel). The lake is already read and written through pyarrow's
filesystems, so Spark's executors read its files the same way: one input partition per file, each
read by pyarrow in the executor (credentials from the executor's ``AWS_*`` variables, options from the
lake's URI) and handed to Spark as Arrow record batches, in the lake's schema (:func:`.lake.conform`).
Clusters that have the connector can point ``analyzer.lake_dir`` at ``s3a://`` paths instead (docs/analyzer.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

SOURCE_NAME = "splitwatch_lake"

_SPARK_TYPES = {pa.string(): "STRING", pa.int32(): "INT", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
                pa.bool_(): "BOOLEAN"}


def spark_ddl(schema: pa.Schema) -> str:
    """Return ``schema`` as Spark's DDL (``event_id STRING, ts TIMESTAMP, ...``)."""
    def kind(t: pa.DataType) -> str:
        return "TIMESTAMP" if pa.types.is_timestamp(t) else _SPARK_TYPES[t]

    return ", ".join(f"`{f.name}` {kind(f.type)}" for f in schema)


class LakeFiles(DataSource):
    """Options: ``location`` (the lake's URI, with its query), ``files`` (a JSON list of the files' paths in
    the store), ``schema`` (Spark DDL)."""

    @classmethod
    def name(cls) -> str:
        """Return the format's name for ``spark.read.format``."""
        return SOURCE_NAME

    def schema(self) -> str:
        """Return the lake's schema as Spark DDL."""
        return self.options["schema"]

    def reader(self, schema: Any) -> DataSourceReader:
        """Return the reader of the listed files."""
        return LakeFilesReader(self.options["location"], json.loads(self.options["files"]))


class LakeFilesReader(DataSourceReader):
    """Reads one file per input partition with pyarrow."""

    def __init__(self, location: str, files: list[str]) -> None:
        self.location = location
        self.files = files

    def partitions(self) -> list[InputPartition]:
        """Return one input partition per file."""
        return [InputPartition(f) for f in self.files]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Yield the file's rows as Arrow record batches, in the lake's schema."""
        import pyarrow.parquet as pq
        from pyarrow import fs as pafs

        from .lake import SCHEMA, conform

        filesystem, _ = pafs.FileSystem.from_uri(self.location)
        with filesystem.open_input_file(partition.value) as f:  # the file alone: no partition columns from its path
            table = conform(pq.ParquetFile(f).read(), SCHEMA)
        yield from table.to_batches()
