"""Small real models, trained here on a dataset that ships with scikit-learn (no downloads).

Used by the demo seed, the tests and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

IRIS_FIELDS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_instances(fields: list[str] | None = None, count: int = 3) -> list[dict[str, float]]:
    from sklearn.datasets import load_iris

    data = load_iris().data
    picks = [0, 60, 120, 30, 90, 140][:count]
    names = fields or IRIS_FIELDS
    return [dict(zip(names, (float(v) for v in data[i]), strict=True)) for i in picks]


def iris_csv(fields: list[str] | None = None) -> bytes:
    """The iris measurements (150 flowers) as CSV with a header of `fields`: a version's
    reference data for drift."""
    from sklearn.datasets import load_iris

    names = fields or IRIS_FIELDS
    lines = [",".join(names)] + [",".join(f"{float(v):g}" for v in row) for row in load_iris().data]
    return ("\n".join(lines) + "\n").encode()


def train_iris(path: Path, *, max_iter: int = 200, C: float = 1.0) -> dict[str, float]:
    """Fit a logistic regression on iris, save it with joblib, return its evaluation metrics."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=7, stratify=y)
    model = LogisticRegression(max_iter=max_iter, C=C).fit(x_train, y_train)
    joblib.dump(model, path)
    predicted = model.predict(x_test)
    return {
        "accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "f1_macro": round(float(f1_score(y_test, predicted, average="macro")), 4),
    }


def linear_onnx(path: Path, *, weights: list[float], bias: float = 0.0) -> None:
    """An ONNX model computing one linear score per row: y = x · w + b."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(weights)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(n, 1), name="w"),
            numpy_helper.from_array(np.asarray([bias], dtype=np.float32), name="b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def large_sklearn_model(path: Path, size: int, *, seed: int = 1) -> None:
    """A fitted estimator carrying `size` bytes of random payload, for upload tests and benchmarks.

    It loads fast (joblib memory-maps the array) and predicts like any classifier.
    """
    import joblib
    import numpy as np
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier(strategy="most_frequent").fit([[0, 0, 0, 0], [1, 1, 1, 1]], [0, 0])
    overhead = 2048  # what joblib adds around the array
    model.payload_ = np.frombuffer(np.random.default_rng(seed).bytes(max(size - overhead, 1)), dtype=np.uint8)
    joblib.dump(model, path)
