"""Live quality: logged predictions joined with the outcomes sent for them, per version.

Classification: accuracy, macro precision, recall and F1 (over every label seen, a label
never predicted or never true counting 0, as scikit-learn's zero_division=0), and the
confusion matrix (rows: actual, columns: predicted). Regression: MAE, RMSE and R². Each with
the number of labelled predictions behind it. A request with several instances counts one
labelled prediction per instance: its outcome is then a list, one per instance.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from monitoring.store import PredictionStore


@dataclass
class VersionQuality:
    version: str
    task: str
    labelled: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    registered: dict[str, float] = field(default_factory=dict)
    unusable: int = 0  # outcomes that did not match their prediction's shape
    # How far off the headline metrics may be by chance (accuracy as a share of outcomes;
    # RMSE through the spread of the squared errors): what a canary's comparison allows for.
    standard_errors: dict[str, float] = field(default_factory=dict)


def live_quality(
    store: PredictionStore,
    *,
    service: str,
    environment: str,
    tasks: dict[str, str],
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> dict[str, VersionQuality]:
    """Per version (`tasks` maps each version to its task), its live quality in the window."""
    return quality_overview(store, service=service, environment=environment, tasks=tasks, since=since, until=until)[0]


def quality_overview(
    store: PredictionStore,
    *,
    service: str,
    environment: str,
    tasks: dict[str, str],
    since: dt.datetime,
    until: dt.datetime | None = None,
    bucket_hours: int | None = None,
) -> tuple[dict[str, VersionQuality], dict[str, dict[dt.datetime, VersionQuality]]]:
    """Per version, its live quality over the window and, with `bucket_hours`, in each bucket
    of that many hours (keyed by the bucket's start), from one pass over the log."""
    until = until or dt.datetime.now(dt.UTC)
    bucket = bucket_sql(bucket_hours, "p.ts") if bucket_hours else "NULL::TIMESTAMPTZ"
    # Joined, deduplicated (a drain may have written a record twice), then grouped: what comes
    # back is one row per distinct (version, bucket, predictions, outcome), with how many there were.
    rows = store.query(
        ", joined AS (SELECT p.id, p.version, "  # noqa: S608 - a fixed interval of a whole number of hours
        f"{bucket} AS bucket, json_extract(p.outputs, '$.predictions')::VARCHAR AS predicted, "
        "f.actual FROM predictions p JOIN feedback f ON f.prediction_id = p.id "
        "WHERE p.status = 200 AND p.outputs IS NOT NULL AND p.ts >= ? AND p.ts < ?), "
        "once AS (SELECT DISTINCT ON (id) version, bucket, predicted, actual FROM joined) "
        "SELECT version, bucket, predicted, actual, count(*) FROM once GROUP BY ALL",
        service=service,
        environment=environment,
        params=[since, until],
        feedback=True,
        since=since.date(),
    )
    overall: dict[str, list] = defaultdict(list)
    by_bucket: dict[str, dict[dt.datetime, list]] = defaultdict(lambda: defaultdict(list))
    for version, start, predicted, actual, count in rows or []:
        overall[version].append((predicted, actual, count))
        if bucket_hours:
            by_bucket[version][start].append((predicted, actual, count))
    result = {version: _measure(version, tasks.get(version, ""), rows) for version, rows in sorted(overall.items())}
    series = {
        version: {start: _measure(version, tasks.get(version, ""), rows) for start, rows in sorted(buckets.items())}
        for version, buckets in by_bucket.items()
    }
    return result, series


def bucket_sql(hours: int, column: str) -> str:
    """The start of the `hours`-long bucket a time is in, counted from the Unix epoch (so in
    UTC, whatever time zone DuckDB runs in)."""
    seconds = int(hours) * 3600
    return f"to_timestamp(floor(epoch({column}) / {seconds}) * {seconds})"


def _measure(version: str, task: str, rows: list[tuple[str | None, str, int]]) -> VersionQuality:
    quality = VersionQuality(version=version, task=task)
    pairs: list[tuple[Any, Any, int]] = []
    for predicted, actual, count in rows:
        matched = _pairs(predicted, actual)
        if matched is None:
            quality.unusable += count
        else:
            pairs += [(p, a, count) for p, a in matched]
    if task == "classification":
        _classification(quality, pairs)
    elif task == "regression":
        _regression(quality, pairs)
    return quality


def _pairs(predicted: str | None, actual: str) -> list[tuple[Any, Any]] | None:
    """(predicted, actual) for each instance of a logged answer (its predictions as JSON), or
    None if they do not line up."""
    try:
        predictions = json.loads(predicted) if predicted else None
        outcome = json.loads(actual)
    except ValueError:
        return None
    if not isinstance(predictions, list) or not predictions:
        return None
    if len(predictions) == 1:
        outcome = outcome[0] if isinstance(outcome, list) and len(outcome) == 1 else outcome
        return [(predictions[0], outcome)]
    if not isinstance(outcome, list) or len(outcome) != len(predictions):
        return None
    return list(zip(predictions, outcome, strict=True))


def _label(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | str):
        return str(value)
    return None


def _classification(quality: VersionQuality, pairs: list[tuple[Any, Any, int]]) -> None:
    labelled = [(_label(p), _label(a), n) for p, a, n in pairs]
    quality.unusable += sum(n for p, a, n in labelled if p is None or a is None)
    labelled = [(p, a, n) for p, a, n in labelled if p is not None and a is not None]
    quality.labelled = sum(n for _, _, n in labelled)
    if not labelled:
        return
    seen = {v for p, a, _ in labelled for v in (p, a)}
    labels = sorted(seen, key=lambda v: (not v.lstrip("-").isdigit(), _num(v), v))
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for predicted, actual, count in labelled:
        confusion[index[actual]][index[predicted]] += count
    precisions, recalls, f1s = [], [], []
    for i in range(len(labels)):
        true_positive = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        actual = sum(confusion[i])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    accuracy = sum(confusion[i][i] for i in range(len(labels))) / quality.labelled
    quality.standard_errors = {"accuracy": math.sqrt(accuracy * (1 - accuracy) / quality.labelled)}
    quality.metrics = {
        "accuracy": accuracy,
        "precision_macro": sum(precisions) / len(labels),
        "recall_macro": sum(recalls) / len(labels),
        "f1_macro": sum(f1s) / len(labels),
    }
    quality.labels, quality.confusion = labels, confusion


def _num(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        return 0.0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _regression(quality: VersionQuality, pairs: list[tuple[Any, Any, int]]) -> None:
    numbers = [(float(p), float(a), n) for p, a, n in pairs if _number(p) and _number(a)]
    quality.unusable += sum(n for _, _, n in pairs) - sum(n for _, _, n in numbers)
    count = quality.labelled = sum(n for _, _, n in numbers)
    if not count:
        return
    mean = sum(a * n for _, a, n in numbers) / count
    total = sum((a - mean) ** 2 * n for _, a, n in numbers)
    residual = sum((p - a) ** 2 * n for p, a, n in numbers)
    mse = residual / count
    quality.metrics = {
        "mae": sum(abs(p - a) * n for p, a, n in numbers) / count,
        "rmse": math.sqrt(mse),
        **({"r2": 1 - residual / total} if total else {}),
    }
    # The squared errors' mean has the standard error sd / sqrt(n); the RMSE, its square root,
    # about half of that relative to it (the delta method).
    spread = math.sqrt(max(0.0, sum((p - a) ** 4 * n for p, a, n in numbers) / count - mse**2) / count)
    quality.standard_errors = {"rmse": spread / (2 * math.sqrt(mse)) if mse else 0.0}
