"""Load a model artifact of a flavor and predict with it.

One loader per flavor, shared by the registry's load check (`python -m modelserver.check`)
and, later, by the model server itself, so a version that passed the check is served the
same way.

Instances are JSON values: an object per instance (fields by name) or an array of values.
sklearn and onnx models take a 2-D array, so objects are turned into rows in a fixed field
order: the estimator's own `feature_names_in_` when it has them, else the input schema's
`required` list (JSON objects have no order to rely on), else the order of the first instance's
keys. pyfunc models get the instances as they are.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FLAVORS = ("sklearn", "onnx", "pyfunc")


class ModelError(Exception):
    """Something a data scientist must fix in the artifact or the input; the message says what."""


def _to_python(value: Any) -> Any:
    """numpy scalars and arrays to plain JSON-able values."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, list | tuple):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_python(v) for k, v in value.items()}
    return value


def rows_from_instances(instances: Sequence[Any], field_order: Sequence[str] | None) -> list[list[Any]]:
    if not instances:
        raise ModelError("No instances to predict.")
    if all(isinstance(i, dict) for i in instances):
        order = list(field_order or instances[0].keys())
        rows = []
        for n, instance in enumerate(instances):
            missing = [f for f in order if f not in instance]
            if missing:
                raise ModelError(f"Instance {n} lacks the field(s) {', '.join(missing)}.")
            rows.append([instance[f] for f in order])
        return rows
    if all(isinstance(i, list | tuple) for i in instances):
        return [list(i) for i in instances]
    if all(not isinstance(i, dict | list | tuple) for i in instances):
        return [[i] for i in instances]
    raise ModelError("Instances must all be objects, all arrays, or all single values.")


class Predictor:
    def __init__(self, predict: Callable[[list[Any]], Any]):
        self._predict = predict

    def predict(self, instances: list[Any]) -> list[Any]:
        predictions = _to_python(self._predict(instances))
        if not isinstance(predictions, list):
            raise ModelError(f"predict() returned {type(predictions).__name__}, not a list of predictions.")
        if len(predictions) != len(instances):
            raise ModelError(f"predict() returned {len(predictions)} predictions for {len(instances)} instances.")
        return predictions


def _load_sklearn(path: Path, field_order: Sequence[str] | None) -> Predictor:
    import joblib

    try:
        # mmap keeps large numpy arrays on disk instead of copying them into memory.
        model = joblib.load(path, mmap_mode="r")
    except MemoryError:
        raise
    except Exception as joblib_error:  # noqa: BLE001 - fall back to a plain pickle, then report
        try:
            with open(path, "rb") as handle:
                model = pickle.load(handle)  # noqa: S301 - artifacts are code by nature; see check.py's limits
        except Exception:  # noqa: BLE001
            raise ModelError(
                f"Not a joblib or pickle file of a scikit-learn model ({type(joblib_error).__name__}: {joblib_error})."
            ) from None
    if not callable(getattr(model, "predict", None)):
        raise ModelError(f"The file holds a {type(model).__name__}, which has no predict() method.")
    names = getattr(model, "feature_names_in_", None)
    order = [str(n) for n in names] if names is not None else field_order
    try:
        import pandas as pd  # an estimator fitted on a DataFrame may need one back (columns by name)
    except ImportError:
        pd = None
    import numpy as np

    # Set once, not per request: rows in the estimator's own column order carry no names.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    try:
        import sklearn
    except ImportError:  # a plain pickle of something else with predict()
        sklearn = None

    def checked():
        return sklearn.config_context(assume_finite=False) if sklearn else contextlib.nullcontext()

    if sklearn:
        # All-number rows are checked here, in one numpy pass, so scikit-learn need not scan
        # them again (a fifth of a one-row prediction's time); any other input keeps its checks.
        sklearn.set_config(assume_finite=True)
    as_frame = False  # becomes True if the model refuses a plain array (it selects columns by name)

    def predict(instances: list[Any]) -> Any:
        nonlocal as_frame
        rows = rows_from_instances(instances, order)
        matrix = None if as_frame else np.asarray(rows)
        if matrix is not None and matrix.dtype.kind in "iuf":  # numbers only: no strings, None or booleans
            matrix = matrix.astype(float, copy=False)
            if not np.isfinite(matrix).all():
                raise ModelError("Every value must be a finite number (Infinity or a number too large is not).")
            try:
                return model.predict(matrix)
            except (TypeError, ValueError, KeyError, AttributeError):
                if pd is None or names is None:
                    raise
                with checked():
                    answer = model.predict(pd.DataFrame(rows, columns=order))  # raises if the input is wrong
                as_frame = True
                return answer
        with checked():  # strings, missing values, booleans: the model's own preprocessing decides
            if pd is not None and names is not None:
                return model.predict(pd.DataFrame(rows, columns=order))
            return model.predict(rows)

    return Predictor(predict)


def _load_onnx(path: Path, field_order: Sequence[str] | None) -> Predictor:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes
        raise ModelError(f"Not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"The ONNX model has {len(inputs)} inputs; the portal serves models with one input.")
    name = inputs[0].name
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}.get(
        inputs[0].type, np.float32
    )

    def predict(instances: list[Any]) -> Any:
        rows = np.asarray(rows_from_instances(instances, field_order), dtype=dtype)
        return session.run(None, {name: rows})[0]

    return Predictor(predict)


def _load_pyfunc(path: Path, field_order: Sequence[str] | None) -> Predictor:
    # An explicit source loader: the file name need not end in .py (stored artifacts are
    # named by their digest).
    loader = importlib.machinery.SourceFileLoader("portal_pyfunc_model", str(path))
    spec = importlib.util.spec_from_loader("portal_pyfunc_model", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["portal_pyfunc_model"] = module
    try:
        spec.loader.exec_module(module)
    except (SyntaxError, ValueError) as exc:
        if isinstance(exc, ValueError) and "null bytes" not in str(exc):
            raise ModelError(f"Importing the Python file failed: {exc}") from None
        detail = f"{exc.msg} (line {exc.lineno})" if isinstance(exc, SyntaxError) else "it contains binary data"
        raise ModelError(f"Not a Python file: {detail}.") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the module's own import-time error
        raise ModelError(f"Importing the Python file failed: {type(exc).__name__}: {exc}") from None
    predict = getattr(module, "predict", None)
    if not callable(predict):
        raise ModelError("The Python file defines no function predict(instances).")
    return Predictor(predict)


_LOADERS = {"sklearn": _load_sklearn, "onnx": _load_onnx, "pyfunc": _load_pyfunc}


def load(flavor: str, path: str | Path, *, field_order: Sequence[str] | None = None) -> Predictor:
    if flavor not in _LOADERS:
        raise ModelError(f"Unknown flavor {flavor!r}; flavors are {', '.join(FLAVORS)}.")
    return _LOADERS[flavor](Path(path), field_order)
