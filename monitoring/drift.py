"""Drift: how far live inputs have moved from a version's reference data, per input feature.

For each feature, the logged instances of a window are put in the reference's bins
(registry.reference: decile edges for numbers, the most common values for categories) by
DuckDB, over the Parquet files; then, per feature:

- PSI, the population stability index: sum over bins of (live - expected) * ln(live / expected),
  shares smoothed by EPSILON so an empty bin does not make it infinite. The usual reading:
  below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one.
- the share of instances missing the feature (or with a value of the wrong type),
- the share outside the reference's range (numbers below its min or above its max, or
  categories it never had).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from monitoring.store import PredictionStore
from registry import selectors as registry_selectors
from registry.models import ModelVersion

EPSILON = 1e-4


@dataclass
class FeatureDrift:
    feature: str
    count: int  # instances scored
    psi: float | None  # None when no instance had a value
    missing_rate: float
    out_of_range_rate: float


def reference_profiles(versions: dict[str, ModelVersion]) -> dict[str, dict]:
    """The reference profile of each version that has one (uploaded, or its sample input)."""
    profiles = {name: registry_selectors.version_reference(version=v) for name, v in versions.items()}
    return {name: profile for name, profile in profiles.items() if profile}


def psi(expected: list[float], live: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, live, strict=True):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def score(
    store: PredictionStore,
    *,
    service: str,
    environment: str,
    profiles: dict[str, dict],
    since: dt.datetime,
    until: dt.datetime,
) -> dict[str, list[FeatureDrift]]:
    """Per version (the keys of `profiles`, each version's reference profile), the drift of
    each of its features over [since, until)."""
    versions = [v for v, p in profiles.items() if p and p.get("features")]
    if not versions:
        return {}
    selects, params = [], []
    for version in versions:
        for n, feature in enumerate(profiles[version]["features"]):
            select, arguments = _bins_sql(feature)
            selects.append(f"SELECT ? AS version, {n} AS feature, bin, count(*) AS n FROM ({select}) GROUP BY bin")  # noqa: S608 - fixed text and numbers; values are parameters
            params += [version, *(version if a is _VERSION else a for a in arguments)]
    rows = store.query(
        ", once AS (SELECT DISTINCT ON (id) version, inputs FROM predictions "  # noqa: S608 - fixed text and numbers; values are parameters
        "WHERE status = 200 AND inputs IS NOT NULL AND ts >= ? AND ts < ? AND version IN (SELECT unnest(?))), "
        "instances AS (SELECT version, unnest(CAST(json_extract(inputs, '$.instances') AS JSON[])) AS x FROM once) "
        + " UNION ALL ".join(selects),
        service=service,
        environment=environment,
        params=[since, until, versions, *params],
        since=since.date(),
    )
    counted: dict[tuple[str, int], dict[int, int]] = {}
    for version, feature, bin_, n in rows or []:
        counted.setdefault((version, feature), {})[bin_] = n
    result: dict[str, list[FeatureDrift]] = {}
    for version in versions:
        scored = []
        for n, feature in enumerate(profiles[version]["features"]):
            bins = counted.get((version, n))
            if bins:
                scored.append(_drift(feature, bins))
        if scored:
            result[version] = scored
    return result


# Bins: 0..k are the reference's bins; these two are extra.
MISSING, OUTSIDE = -1, -2
_VERSION = object()  # stands for the version's name among a SELECT's parameters


def _bins_sql(feature: dict) -> tuple[str, list]:
    """A SELECT of one `bin` per instance of a version for `feature`, and its parameters
    (_VERSION where the version goes). Numbers outside the reference's range are
    counted in their bin and once more as OUTSIDE."""
    path = feature["path"]
    value = "json_extract_string(x, ?)"
    if feature["kind"] == "number":
        number = f"TRY_CAST({value} AS DOUBLE)"
        edges = feature["edges"]
        low, high = feature["min"], feature["max"]
        select = (
            f"SELECT d, CASE WHEN d IS NULL OR isnan(d) OR isinf(d) THEN {MISSING} "  # noqa: S608 - fixed text and numbers; values are parameters
            "ELSE len(list_filter(?::DOUBLE[], lambda e: e < d)) END AS bin "
            f"FROM (SELECT {number} AS d FROM instances WHERE version = ?)"
        )
        # The instances out of range, again, as their own bin.
        select = (
            f"SELECT bin FROM ({select}) UNION ALL SELECT {OUTSIDE} AS bin FROM "  # noqa: S608 - fixed text and numbers; values are parameters
            f"(SELECT {number} AS d FROM instances WHERE version = ?) WHERE d < ? OR d > ?"
        )
        return select, [edges, path, _VERSION, path, _VERSION, low, high]
    categories = feature["categories"]
    select = (
        f"SELECT CASE WHEN v IS NULL THEN {MISSING} "  # noqa: S608 - fixed text and numbers; values are parameters
        f"ELSE coalesce(list_position(?::VARCHAR[], v) - 1, {len(categories)}) END AS bin "
        f"FROM (SELECT {value} AS v FROM instances WHERE version = ?)"
    )
    return select, [categories, path, _VERSION]


def _drift(feature: dict, bins: dict[int, int]) -> FeatureDrift:
    outside = bins.pop(OUTSIDE, 0)
    missing = bins.pop(MISSING, 0)
    present = sum(bins.values())
    count = present + missing
    expected = feature["expected"]
    if feature["kind"] == "category":
        outside = bins.get(len(feature["categories"]), 0)  # values the reference never had
        if expected[-1] > 0:
            outside = 0  # the reference had rare values of its own: "other" is not out of range
    live = [bins.get(i, 0) / present for i in range(len(expected))] if present else None
    return FeatureDrift(
        feature=feature["name"],
        count=count,
        psi=psi(expected, live) if live is not None else None,
        missing_rate=missing / count if count else 0.0,
        out_of_range_rate=outside / present if present else 0.0,
    )
