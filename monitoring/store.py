"""The prediction log at rest: Parquet files partitioned by service, environment and day,
queried with DuckDB.

    {root}/service={service}/environment={environment}/day={YYYY-MM-DD}/part-{time}-{random}.parquet

Each drain writes one file per partition it has records for (pyarrow, zstd); queries read
the partitions they need with DuckDB's `read_parquet` (hive partitioning), so the same SQL
later reads them from object storage. A record may be written twice if a worker dies
between writing and acknowledging its batch: queries count distinct prediction ids.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from gateway.contract import PREDICTION_FIELDS

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("service", pa.string()),
        ("environment", pa.string()),
        ("major", pa.int32()),
        ("version", pa.string()),
        ("deployment", pa.int64()),
        ("status", pa.int16()),
        ("latency_ms", pa.float64()),
        ("instances", pa.int32()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
    ]
)
assert tuple(SCHEMA.names) == PREDICTION_FIELDS
# Ground truth sent for predictions: the latest row for a prediction id wins.
FEEDBACK_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("actual", pa.string()),  # JSON
        ("received_at", pa.timestamp("ms", tz="UTC")),
        ("sent_by", pa.string()),
    ]
)
# A partition with at least this many files is merged into one by the compaction task.
COMPACT_MIN_FILES = 20
# Files this large are left as they are (a merged file already).
COMPACT_LARGE_BYTES = 64 * 1024 * 1024
# What each record's fields are turned into before they go in a column.
_CONVERT = {"ts": lambda v: int(float(v) * 1000)}


class PredictionStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def partition(self, service: str, environment: str, day: dt.date | str) -> Path:
        return self.root / f"service={service}" / f"environment={environment}" / f"day={day}"

    # ---------------------------------------------------------------- writing

    def write(self, records: Iterable[Sequence[Any]]) -> list[Path]:
        """Write records (lists in PREDICTION_FIELDS order) into their partitions; the files made."""
        by_partition: dict[tuple[str, str, str], list[Sequence[Any]]] = defaultdict(list)
        for record in records:
            day = dt.datetime.fromtimestamp(float(record[1]), dt.UTC).date().isoformat()
            by_partition[(record[2], record[3], day)].append(record)
        written = []
        for (service, environment, day), rows in by_partition.items():
            columns = {
                name: [_CONVERT.get(name, _same)(row[i]) for row in rows] for i, name in enumerate(PREDICTION_FIELDS)
            }
            table = pa.Table.from_pydict(columns, schema=SCHEMA)
            directory = self.partition(service, environment, day)
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / f"part-{time.time_ns():x}-{os.urandom(4).hex()}.parquet"
            temporary = final.with_suffix(".tmp")
            pq.write_table(table, temporary, compression="zstd")
            os.replace(temporary, final)  # readers never see half a file
            written.append(final)
        return written

    def write_feedback(self, service: str, rows: Sequence[tuple[str, str, str]]) -> Path:
        """Store ground truth rows (prediction id, actual as JSON, who sent it) received now."""
        now = dt.datetime.now(dt.UTC)
        table = pa.Table.from_pydict(
            {
                "prediction_id": [r[0] for r in rows],
                "actual": [r[1] for r in rows],
                "received_at": [now] * len(rows),
                "sent_by": [r[2] for r in rows],
            },
            schema=FEEDBACK_SCHEMA,
        )
        directory = self.root / "feedback" / f"service={service}" / f"day={now.date().isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{time.time_ns():x}-{os.urandom(4).hex()}.parquet"
        temporary = final.with_suffix(".tmp")
        pq.write_table(table, temporary, compression="zstd")
        os.replace(temporary, final)
        return final

    def known_ids(self, service: str, ids: Iterable[str]) -> set[str]:
        """Which of `ids` are logged predictions of `service` (read only the days the ids
        were made on: an id starts with its time)."""
        by_day: dict[str, list[str]] = defaultdict(list)
        for prediction_id in ids:
            try:
                made = dt.datetime.fromtimestamp(int(prediction_id[:11], 16) / 1000, dt.UTC)
            except (ValueError, OverflowError, OSError):
                continue
            by_day[made.date().isoformat()].append(prediction_id)
        files = [
            str(path)
            for day in by_day
            for path in (self.root / f"service={service}").glob(f"environment=*/day={day}/*.parquet")
        ]
        if not files:
            return set()
        connection = duckdb.connect()
        try:
            rows = connection.execute(
                "SELECT DISTINCT id FROM read_parquet(?) WHERE id IN (SELECT unnest(?))",
                [files, [i for day_ids in by_day.values() for i in day_ids]],
            ).fetchall()
        finally:
            connection.close()
        return {row[0] for row in rows}

    # ---------------------------------------------------------------- reading

    def files(self, service: str, environment: str | None = None, *, since: dt.date | None = None) -> list[str] | None:
        """The files DuckDB reads for a service (in one environment or all; from the day
        `since` on, when given), or None if there are none."""
        base = self.root / f"service={service}"
        found = []
        for directory in base.glob(f"environment={environment}/day=*" if environment else "environment=*/day=*"):
            if since is not None and directory.name.removeprefix("day=") < since.isoformat():
                continue
            found += [str(path) for path in directory.glob("*.parquet")]
        return sorted(found) or None

    def query(
        self,
        sql: str,
        *,
        service: str,
        environment: str | None = None,
        params: list | None = None,
        feedback: bool = False,
        since: dt.date | None = None,
        retried: bool = False,
    ):
        """Run `sql` with the table `predictions` standing for a service's logged predictions
        (one environment, or all; only the days from `since` on, when given) and, with
        `feedback`, the table `feedback` for the latest outcome sent for each prediction id;
        None when nothing has been logged (in those days)."""
        files = self.files(service, environment, since=since)
        if files is None:
            return None
        scan = "WITH predictions AS (SELECT * FROM read_parquet(?, hive_partitioning = false))"
        arguments: list = [files]
        if feedback:
            outcomes = self.root / "feedback" / f"service={service}" / "day=*" / "*.parquet"
            if any(outcomes.parent.parent.glob("day=*/*.parquet")):
                scan += (
                    ", feedback AS (SELECT prediction_id, arg_max(actual, received_at) AS actual "
                    "FROM read_parquet(?) GROUP BY prediction_id)"
                )
                arguments.append(str(outcomes))
            else:
                scan += ", feedback AS (SELECT NULL::VARCHAR AS prediction_id, NULL::VARCHAR AS actual WHERE false)"
        connection = duckdb.connect()
        try:
            return connection.execute(f"{scan} {sql}", [*arguments, *(params or [])]).fetchall()
        except duckdb.IOException:
            if retried:
                raise
            # A compaction removed a file between listing and reading: list them again.
            return self.query(
                sql,
                service=service,
                environment=environment,
                params=params,
                feedback=feedback,
                since=since,
                retried=True,
            )
        finally:
            connection.close()

    # ---------------------------------------------------------------- compaction

    def compact(self, directory: Path, *, min_files: int = COMPACT_MIN_FILES) -> int:
        """Merge the files of one partition (a day of a service in an environment, or of its
        feedback) into one, streaming file by file; how many files were merged.

        Drains write a file every few seconds: a day would otherwise be tens of thousands of
        small files, and queries would spend their time opening them. The merged file appears
        (atomically) before its inputs are removed, so a reader never misses a record; one
        that lists the files in between may count a record twice for a moment, which the
        queries that matter (distinct ids) do not.
        """
        with open(directory / ".compacting", "w") as lock:
            try:  # one compaction of a partition at a time; a busy one is left for the next run
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            # Only the small files: a day's large merged file is not read and rewritten again.
            files = sorted(p for p in directory.glob("part-*.parquet") if p.stat().st_size < COMPACT_LARGE_BYTES)
            if len(files) < min_files:
                return 0
            final = directory / f"part-{time.time_ns():x}-{os.urandom(4).hex()}.parquet"
            temporary = final.with_suffix(".tmp")
            writer = None
            try:
                for path in files:  # batch by batch: memory stays bounded however large the day
                    source = pq.ParquetFile(path)
                    if writer is None:
                        writer = pq.ParquetWriter(temporary, source.schema_arrow, compression="zstd")
                    for batch in source.iter_batches(batch_size=65_536):
                        writer.write_batch(batch)
            except BaseException:
                if writer is not None:
                    writer.close()
                temporary.unlink(missing_ok=True)
                raise
            writer.close()
            os.replace(temporary, final)
            for path in files:
                path.unlink(missing_ok=True)
            return len(files)

    def partitions(self) -> list[Path]:
        """Every day directory: of logged predictions, and of feedback."""
        return sorted(self.root.glob("service=*/environment=*/day=*")) + sorted(
            (self.root / "feedback").glob("service=*/day=*")
        )

    # ---------------------------------------------------------------- retention

    def sweep(self, service: str, environment: str, keep_days: int, *, today: dt.date | None = None) -> int:
        """Remove the day partitions older than `keep_days`; how many were removed."""
        cutoff = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=keep_days)
        removed = 0
        for directory in (self.root / f"service={service}" / f"environment={environment}").glob("day=*"):
            try:
                day = dt.date.fromisoformat(directory.name.removeprefix("day="))
            except ValueError:
                continue
            if day < cutoff:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed

    def services(self) -> list[tuple[str, str]]:
        """(service, environment) pairs that have logged predictions on disk."""
        pairs = []
        for service in self.root.glob("service=*"):
            for environment in service.glob("environment=*"):
                pairs.append((service.name.removeprefix("service="), environment.name.removeprefix("environment=")))
        return pairs


def _same(value: Any) -> Any:
    return value
