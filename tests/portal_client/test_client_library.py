"""The Python client from a notebook's point of view, against the real web server."""

import hashlib

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from accounts.services import token_create
from portal_client import Client, InvalidUsage, NotFound, Refused
from registry import services
from registry.models import ModelVersion, Upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cli]


class Recorder:
    """A progress display that remembers what it was told."""

    def __init__(self):
        self.started: list[tuple[str, int, int]] = []
        self.updates: list[int] = []
        self.messages: list[str] = []

    def start(self, description: str, total: int, completed: int = 0) -> None:
        self.started.append((description, total, completed))

    def update(self, completed: int) -> None:
        self.updates.append(completed)

    def status(self, message: str) -> None:
        self.messages.append(message)

    def stop(self) -> None:
        pass


@pytest.fixture
def client(portal_server, member, team, cli_home) -> Client:
    services.registered_model_create(actor=member, name="iris", team=team)
    return Client(url=portal_server.url, token=token_create(actor=None, user=member, name="notebook")[1])


def test_register_a_fitted_model_object_with_a_numpy_sample(client):
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    progress = Recorder()
    version = client.register_version(
        "iris", model, version="1.0.0", sample_input=x[[0, 60, 120]], metrics={"accuracy": 0.97}, progress=progress
    )
    assert version["flavor"] == "sklearn" and version["artifact_filename"] == "iris-1.0.0.joblib"
    assert version["input_schema_inferred"] and version["input_schema"]["type"] == "array"
    assert version["sample_output"] == model.predict(x[[0, 60, 120]]).tolist()
    assert version["metrics"] == {"accuracy": 0.97}
    assert [d for d, _, _ in progress.started] == ["Hashing iris-1.0.0.joblib", "Uploading iris-1.0.0.joblib"]
    assert progress.updates[-1] == version["size"]
    assert Upload.objects.get().status == "registered"


def test_the_same_file_again_sends_no_bytes_and_downloads_intact(client, iris_file, tmp_path):
    first = client.register_version("iris", iris_file, version="1.0.0", sample_input=np.array([[5.1, 3.5, 1.4, 0.2]]))
    progress = Recorder()
    second = client.register_version(
        "iris", str(iris_file), version="1.0.1", sample_input=[[5.1, 3.5, 1.4, 0.2]], progress=progress
    )
    assert second["sha256"] == first["sha256"] == hashlib.sha256(iris_file.read_bytes()).hexdigest()
    assert "nothing to send" in " ".join(progress.messages)
    assert [d for d, _, _ in progress.started] == [f"Hashing {iris_file.name}"]
    assert ModelVersion.objects.values("artifact").distinct().count() == 1

    saved = client.download("iris", "1.0.1", tmp_path, progress=True)  # a bar in a terminal or notebook
    assert saved == tmp_path / "iris-1.0.1.joblib" and saved.read_bytes() == iris_file.read_bytes()
    # Never over an existing file unless asked, and never as a hidden file.
    saved.write_bytes(b"mine")
    with pytest.raises(InvalidUsage, match="Pass --force"):
        client.download("iris", "1.0.1", tmp_path)
    assert saved.read_bytes() == b"mine"
    assert client.download("iris", "1.0.1", tmp_path, overwrite=True).read_bytes() == iris_file.read_bytes()
    with pytest.raises(InvalidUsage, match="hidden file"):
        client.download("iris", "1.0.1", tmp_path / ".bashrc")
    assert not (tmp_path / ".bashrc").exists()


def test_client_errors_are_exceptions_with_one_line_messages(client, iris_file):
    with pytest.raises(InvalidUsage, match="sample input is required"):
        client.register_version("iris", iris_file, version="1.0.0")
    with pytest.raises(InvalidUsage, match="Cannot tell the flavor"):
        client.register_version("iris", iris_file.with_suffix(".bin"), version="1.0.0", sample_input=[[1, 2, 3, 4]])
    with pytest.raises(InvalidUsage, match="has no predict"):
        client.register_version("iris", object(), version="1.0.0", sample_input=[[1, 2, 3, 4]])
    with pytest.raises(NotFound, match="No model named 'nope'"):
        client.model("nope")
    with pytest.raises(Refused, match="not a semantic version") as refused:
        client.register_version("iris", iris_file, version="1.0", sample_input=[[5.1, 3.5, 1.4, 0.2]])
    assert refused.value.status == 400 and "\n" not in str(refused.value)
    with pytest.raises(InvalidUsage, match="NaN"):
        client.register_version("iris", iris_file, version="1.0.0", sample_input=np.array([[np.nan, 1, 2, 3]]))
