"""Turn what a data scientist has at hand (DataFrames, NumPy arrays, lists) into JSON instances."""

from __future__ import annotations

import json
from typing import Any

from portal_client.errors import InvalidUsage


def _plain(value: Any) -> Any:
    """NumPy and pandas scalars and arrays as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """JSON text; NaN and Infinity are refused (the portal refuses them too, with less context)."""
    try:
        return json.dumps(value, default=_plain, allow_nan=False)
    except ValueError:  # allow_nan=False
        raise InvalidUsage(
            "The data holds NaN or Infinity, which JSON cannot carry; fill or drop them first."
        ) from None
    except TypeError as exc:
        raise InvalidUsage(f"The data cannot be sent as JSON: {exc}.") from None


def instances_from(sample: Any, *, model: Any = None) -> list:
    """A list of instances from a DataFrame, an array, a list, or {"instances": [...]}.

    Rows of a plain array become objects keyed by the model's `feature_names_in_` when the
    model was fitted on named columns, so the inferred schema names the features.
    """
    if isinstance(sample, dict) and "instances" in sample:
        sample = sample["instances"]
    if hasattr(sample, "to_dict") and hasattr(sample, "columns"):  # a pandas DataFrame
        records = sample.to_dict(orient="records")
        return json.loads(to_json(records))
    if hasattr(sample, "tolist"):  # a NumPy array
        sample = sample.tolist()
        if getattr(model, "n_features_in_", None) == 1 and sample and not isinstance(sample[0], list):
            sample = [[v] for v in sample]  # one feature: a column, not a row
    if not isinstance(sample, list | tuple):
        raise InvalidUsage("A sample is a list of instances (rows), a NumPy array or a pandas DataFrame.")
    rows = json.loads(to_json(list(sample)))
    names = getattr(model, "feature_names_in_", None)
    if names is not None and rows and all(isinstance(r, list) and len(r) == len(names) for r in rows):
        rows = [dict(zip((str(n) for n in names), r, strict=True)) for r in rows]
    return rows
