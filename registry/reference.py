"""Reference data of a version: what its inputs looked like when it was made (e.g. the
validation set), kept as a profile per input feature that live inputs are compared with.

A profile is JSON, stored on the version, and what drift scoring reads; the rows it was
made from are not kept (they may be large, and private):

    {"source": "upload" | "sample", "filename", "rows", "sha256", "created_at", "created_by",
     "features": [
        {"name", "path", "kind": "number", "edges": [...], "expected": [...], "min", "max", "missing"},
        {"name", "path", "kind": "category", "categories": [...], "expected": [...], "missing"}]}

Numbers are binned on the reference's deciles (`edges`; a value v is in bin
`#{e in edges : e < v}`), categories on their most common values plus one bin for the
rest. `expected` is the share of the reference's non-missing values in each bin, `missing`
the share of rows without a value. `path` is where the feature sits in one instance, as a
JSON path (`$."petal_length"`, `$[2]`, `$`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from core.errors import InvalidInput, PayloadTooLarge

MAX_BYTES = 200 * 1024 * 1024
MAX_ROWS = 2_000_000
# Fewer rows than this: drift is still scored, with a warning that the reference is too small to judge.
MIN_ROWS = 100
QUANTILES = [q / 10 for q in range(1, 10)]
MAX_CATEGORIES = 20
FORMATS = ("csv", "parquet", "json")


def features_of(input_schema: dict) -> list[tuple[str, str]]:
    """(name, JSON path) of each feature of one instance, from the version's input schema."""
    kind = input_schema.get("type")
    if kind == "object" and isinstance(input_schema.get("properties"), dict):
        # The required fields in their order, then the others by name: never the order of the
        # properties' keys, which JSON objects (and PostgreSQL's jsonb) do not keep.
        properties = input_schema["properties"]
        required = [name for name in input_schema.get("required") or [] if name in properties]
        names = required + sorted(set(properties) - set(required))
        return [(name, "$." + json.dumps(name)) for name in names]
    if kind == "array":
        items = input_schema.get("items")
        count = input_schema.get("maxItems") or input_schema.get("minItems") or 0
        if isinstance(items, list):  # a tuple schema
            count = len(items)
        return [(f"[{i}]", f"$[{i}]") for i in range(int(count))]
    return [("value", "$")]


def profile_from_file(
    *, input_schema: dict, filename: str, data: bytes, created_by: str = "", format: str = ""
) -> dict[str, Any]:
    """Profile an uploaded reference file: CSV, Parquet, or JSON (an array of instances, an
    object with "instances", or one instance per line). Refuses files whose columns do not
    cover the version's input features."""
    if len(data) > MAX_BYTES:
        raise PayloadTooLarge(f"A reference file may be at most {MAX_BYTES // (1024 * 1024)} MiB.")
    if not data:
        raise InvalidInput("The reference file is empty.", field="file")
    format = format or _format_of(filename, data)
    features = features_of(input_schema)
    if format == "json":
        columns = _columns_from_instances(_instances_from_json(data), features)
    else:
        table = _read_table(format, data)
        columns = _columns_from_table(table, features)
    profile = profile_from_columns(columns, features)
    profile.update(source="upload", filename=filename[:255], sha256=hashlib.sha256(data).hexdigest())
    profile.update(created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), created_by=created_by)
    return profile


def profile_from_instances(instances: list, input_schema: dict) -> dict[str, Any]:
    """The default reference: a version's sample input (small, so flagged as such)."""
    features = features_of(input_schema)
    profile = profile_from_columns(_columns_from_instances(instances, features), features)
    profile.update(source="sample", filename="", sha256="", created_at="", created_by="")
    return profile


def too_small(profile: dict | None) -> bool:
    return profile is None or profile.get("rows", 0) < MIN_ROWS


# ---------------------------------------------------------------- profiling


def profile_from_columns(columns: dict[str, pa.Array], features: list[tuple[str, str]]) -> dict[str, Any]:
    rows = max((len(c) for c in columns.values()), default=0)
    if rows > MAX_ROWS:
        raise InvalidInput(f"A reference may have at most {MAX_ROWS:,} rows; this one has {rows:,}.", field="file")
    profiled = []
    for name, path in features:
        column = columns[name]
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            profiled.append({"name": name, "path": path, **_numbers(column.cast(pa.float64()), rows)})
        else:
            profiled.append({"name": name, "path": path, **_categories(column, rows)})
    return {"rows": rows, "features": profiled}


def _numbers(column: pa.Array, rows: int) -> dict[str, Any]:
    finite = column.filter(pc.is_finite(column).fill_null(False))
    count = len(finite)
    missing = (rows - count) / rows if rows else 0.0
    if not count:
        return {"kind": "number", "edges": [], "expected": [1.0], "min": None, "max": None, "missing": missing}
    edges = sorted({float(v) for v in pc.quantile(finite, q=QUANTILES).to_pylist()})
    # A value v is in bin #{e : e < v}: bin k holds (edge k-1, edge k], so bins 0..k hold v <= edge k.
    through = [pc.sum(pc.less_equal(finite, edge)).as_py() or 0 for edge in edges]
    counts = [b - a for a, b in zip([0, *through], [*through, count], strict=True)]
    bounds = pc.min_max(finite).as_py()
    return {
        "kind": "number",
        "edges": edges,
        "expected": [c / count for c in counts],
        "min": bounds["min"],
        "max": bounds["max"],
        "missing": missing,
    }


def _categories(column: pa.Array, rows: int) -> dict[str, Any]:
    strings = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
    present = strings.drop_null()
    count = len(present)
    missing = (rows - count) / rows if rows else 0.0
    if not count:
        return {"kind": "category", "categories": [], "expected": [1.0], "missing": missing}
    counted = sorted(
        ((c["values"], c["counts"]) for c in pc.value_counts(present).to_pylist()), key=lambda vc: (-vc[1], vc[0])
    )
    top = counted[:MAX_CATEGORIES]
    rest = count - sum(n for _, n in top)
    return {
        "kind": "category",
        "categories": [v for v, _ in top],
        "expected": [n / count for _, n in top] + [rest / count],
        "missing": missing,
    }


# ---------------------------------------------------------------- reading


def _format_of(filename: str, data: bytes) -> str:
    name = filename.lower()
    if name.endswith(".parquet") or data[:4] == b"PAR1":
        return "parquet"
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    if name.endswith(".csv"):
        return "csv"
    if data.lstrip()[:1] in (b"[", b"{"):
        return "json"
    return "csv"


def _read_table(format: str, data: bytes) -> pa.Table:
    try:
        if format == "parquet":
            return pq.read_table(io.BytesIO(data))
        return pa_csv.read_csv(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(f"The reference file is not readable {format.upper()}: {exc}", field="file") from None


def _columns_from_table(table: pa.Table, features: list[tuple[str, str]]) -> dict[str, pa.Array]:
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    names = [name for name, _ in features]
    if all(name.startswith("[") for name in names) and names:
        # Array instances: the file's columns are the positions, in order.
        if table.num_columns < len(names):
            raise InvalidInput(
                f"Each instance has {len(names)} values, but the reference file has {table.num_columns} columns.",
                field="file",
            )
        return {name: table.column(i).combine_chunks() for i, name in enumerate(names)}
    if names == ["value"] and "value" not in columns and table.num_columns == 1:
        return {"value": table.column(0).combine_chunks()}
    absent = [name for name in names if name not in columns]
    if absent:
        raise InvalidInput(
            f"The reference file has no column for the input field{'s' if len(absent) > 1 else ''} "
            f"{', '.join(absent)} (its columns: {', '.join(table.column_names) or 'none'}).",
            field="file",
        )
    return {name: columns[name] for name in names}


def _instances_from_json(data: bytes) -> list:
    try:
        parsed = json.loads(data)
    except ValueError:
        try:
            parsed = [json.loads(line) for line in data.splitlines() if line.strip()]
        except ValueError:
            raise InvalidInput("The reference file is neither JSON nor JSON lines.", field="file") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("instances"), list):
        parsed = parsed["instances"]
    if not isinstance(parsed, list) or not parsed:
        raise InvalidInput('A JSON reference is an array of instances, or {"instances": [...]}.', field="file")
    return parsed


def _columns_from_instances(instances: list, features: list[tuple[str, str]]) -> dict[str, pa.Array]:
    values: dict[str, list] = {name: [] for name, _ in features}
    for instance in instances:
        for name, _ in features:
            values[name].append(_value(instance, name))
    return {name: _array(column) for name, column in values.items()}


def _value(instance: Any, name: str) -> Any:
    if name.startswith("[") and isinstance(instance, list):
        index = int(name[1:-1])
        return instance[index] if index < len(instance) else None
    if isinstance(instance, dict):
        return instance.get(name)
    return instance if name == "value" else None


def _array(values: list) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([float(v) if v is not None and math.isfinite(v) else None for v in values], pa.float64())
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value, separators=(",", ":"))
