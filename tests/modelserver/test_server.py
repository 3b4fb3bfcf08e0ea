"""The standalone model server: health, predictions for each flavor, graceful drain."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from portal.demo_models import iris_instances, linear_onnx
from scripts.stack import stop, wait_until
from tests.ports import port as free_port
from tests.support import ROOT, call


def serve(path, flavor: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelserver",
            "--artifact",
            str(path),
            "--flavor",
            flavor,
            "--port",
            str(port),
            "--version",
            "1.2.3",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: call(f"{url}/health/ready", timeout=1)[0] == 200 or proc.poll() is not None, 30, "model server"
        )
    except RuntimeError:
        stop(proc)
        raise
    assert proc.poll() is None, proc.stdout.read().decode()
    return proc, url


def test_sklearn_with_named_fields(iris_file):
    proc, url = serve(iris_file, "sklearn", "--field-order", "sepal_length,sepal_width,petal_length,petal_width")
    try:
        assert call(f"{url}/health/live")[0] == 200
        code, body, _ = call(f"{url}/predict", body={"instances": iris_instances()})
        assert code == 200 and body == {"predictions": [0, 1, 2], "model_version": "1.2.3"}
        assert call(f"{url}/predict", body=b"nope")[0] == 400
        code, body, _ = call(f"{url}/predict", body=b'{"instances": [[NaN, 1, 2, 3]]}')
        assert code == 400 and "NaN is not a number JSON allows" in body["error"]
        code, body, _ = call(f"{url}/predict", body=b'{"instances": [[1e999, 1, 2, 3]]}')
        assert code == 422 and "finite number" in body["error"]
        code, body, _ = call(f"{url}/predict", body={"instances": [[None, 1, 2, 3]]})
        assert code == 500 and "The model failed" in body["error"]  # not a silent answer from a NaN
        repeated = call(f"{url}/predict", body={"instances": iris_instances()})
        assert repeated[1]["predictions"] == [0, 1, 2]  # the same answers call after call
        assert call(f"{url}/predict", body={"instances": [{"sepal_length": 1}]})[0] == 422
        assert call(f"{url}/predict")[0] == 405
    finally:
        stop(proc)


def test_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    linear_onnx(path, weights=[1, 2])
    proc, url = serve(path, "onnx")
    try:
        code, body, _ = call(f"{url}/predict", body={"instances": [[1, 1], [2, 0]]})
        assert code == 200 and body["predictions"] == [[3.0], [2.0]]
    finally:
        stop(proc)


def test_a_model_that_fails_answers_500_with_the_reason(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def predict(instances):\n    raise KeyError('colour')\n")
    proc, url = serve(path, "pyfunc")
    try:
        code, body, _ = call(f"{url}/predict", body={"instances": [1]})
        assert code == 500 and "KeyError" in body["error"]
    finally:
        stop(proc)


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text("import time\ndef predict(instances):\n    time.sleep(1.5)\n    return instances\n")
    proc, url = serve(path, "pyfunc")
    result = {}

    def slow_call():
        result["answer"] = call(f"{url}/predict", body={"instances": [7]}, timeout=10)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.5)  # the request is being handled
    proc.send_signal(signal.SIGTERM)
    thread.join(timeout=10)
    assert result["answer"][0] == 200 and result["answer"][1]["predictions"] == [7]
    # uvicorn re-raises SIGTERM once it has drained, so the exit status says why it stopped
    assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"{url}/health/live", timeout=1)  # noqa: S310


def test_a_model_that_does_not_load_exits_with_an_error(tmp_path):
    path = tmp_path / "broken.joblib"
    path.write_bytes(b"garbage")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "modelserver", "--artifact", str(path), "--flavor", "sklearn", "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
