"""Every refused registration answers 4xx with a reason, and registers and stores nothing."""

import json

import pytest

from registry.models import Artifact, ModelVersion
from registry.storage import artifact_store
from tests.factories import register, sample

pytestmark = pytest.mark.django_db


@pytest.fixture
def nothing_left(iris_model):
    """After the test: no version, no artifact row, no stored or staged file."""
    store = artifact_store()
    before = {p for p in store.root.rglob("*") if p.is_file()}
    yield
    assert ModelVersion.objects.count() == 0
    assert Artifact.objects.count() == 0
    after = {p for p in store.root.rglob("*") if p.is_file()}
    assert after == before, after - before


def refused(response, status: int, fragment: str, field: str | None = None):
    assert response.status_code == status, response.content
    body = response.json()
    assert fragment in body["detail"], body["detail"]
    if field:
        assert field in body.get("errors", {}), body
    return body


def test_unknown_flavor(api, member, iris_file, nothing_left):
    refused(register(api(member), "iris", iris_file, flavor="tensorflow"), 400, "Unknown flavor 'tensorflow'", "flavor")


def test_corrupt_artifact(api, member, tmp_path, nothing_left):
    path = tmp_path / "broken.joblib"
    path.write_bytes(b"\x80\x04 definitely not a pickle" * 100)
    refused(register(api(member), "iris", path), 400, "does not load as flavor 'sklearn'", "artifact")


def test_onnx_that_is_not_onnx(api, member, iris_file, nothing_left):
    refused(register(api(member), "iris", iris_file, flavor="onnx"), 400, "Not a valid ONNX model", "artifact")


def test_python_file_that_does_not_parse(api, member, tmp_path, nothing_left):
    path = tmp_path / "bad.py"
    path.write_text("def predict(instances)\n    return 1\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "Not a Python file", "artifact")


def test_model_that_loads_but_fails_on_its_sample(api, member, iris_file, nothing_left):
    # iris wants 4 features; two fields is not enough
    two_fields = json.dumps({"instances": [{"a": 1.0, "b": 2.0}]})
    refused(
        register(api(member), "iris", iris_file, sample_input=two_fields),
        400,
        "fails on its sample input",
        "sample_input",
    )


def test_pyfunc_that_raises(api, member, tmp_path, nothing_left):
    path = tmp_path / "raises.py"
    path.write_text("def predict(instances):\n    raise ValueError('no petals today')\n")
    body = refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "ValueError: no petals today")
    assert "line 2" in body["detail"]


def test_what_a_failing_model_says_back_is_one_short_line(api, member, tmp_path, nothing_left):
    """An exception message is the model's own text: only its first line comes back, cut short,
    so the check is no channel for what the model's code read."""
    path = tmp_path / "leaky.py"
    path.write_text(
        "def predict(instances):\n    raise ValueError('cannot predict\\n' + 'SECRET-LINE\\n' * 1000 + 'x' * 5000)\n"
    )
    body = refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "ValueError: cannot predict")
    assert "SECRET-LINE" not in body["detail"] and len(body["detail"]) < 500, body["detail"]
    long_line = tmp_path / "long.py"
    long_line.write_text("def predict(instances):\n    raise ValueError('y' * 100_000)\n")
    body = refused(register(api(member), "iris", long_line, flavor="pyfunc"), 400, "ValueError: yyy")
    assert len(body["detail"]) < 500


def test_a_check_that_answers_the_wrong_shape_is_refused(api, member, tmp_path, nothing_left):
    """A model's code can write to the check's answer itself: its shape is checked too."""
    path = tmp_path / "forged.py"
    path.write_text(
        "import json, os\n"
        "def predict(instances):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, json.dumps({'ok': True, 'predictions': 5}).encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
    )
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "other than one prediction for each", "artifact")


def test_pyfunc_returning_the_wrong_count(api, member, tmp_path, nothing_left):
    path = tmp_path / "short.py"
    path.write_text("def predict(instances):\n    return [1]\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "returned 1 predictions for 3 instances")


def test_model_that_takes_too_long(api, member, tmp_path, settings, nothing_left):
    settings.MODEL_CHECK_TIMEOUT_SECONDS = 2
    path = tmp_path / "slow.py"
    path.write_text("import time\ntime.sleep(60)\ndef predict(instances):\n    return instances\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "within 2 s", "artifact")


def test_model_that_needs_too_much_memory(api, member, tmp_path, settings, nothing_left):
    settings.MODEL_CHECK_MEMORY_MB = 400
    path = tmp_path / "hungry.py"
    path.write_text("BIG = bytearray(2 * 1024 ** 3)\ndef predict(instances):\n    return instances\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "memory", "artifact")


def test_version_not_greater_than_the_last(api, member, iris_model, iris_file):
    client = api(member)
    assert register(client, "iris", iris_file, version="1.2.0").status_code == 201
    for older in ["1.2.0", "1.1.9"]:
        body = refused(register(client, "iris", iris_file, version=older), 409, "is not greater than 1.2.0")
        assert "1.2.1" in body["detail"]
    assert ModelVersion.objects.count() == 1


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0-beta", "01.0.0", "1.0.0.0", "one"])
def test_invalid_semver(api, member, iris_file, version, nothing_left):
    refused(register(api(member), "iris", iris_file, version=version), 400, "is not a semantic version", "version")


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ('{"type": "nonsense"}', "Not a valid JSON Schema"),
        ('{"properties": 5}', "Not a valid JSON Schema"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "input_schema is not valid JSON"),
    ],
)
def test_schema_that_is_not_json_schema(api, member, iris_file, schema, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, input_schema=schema), 400, fragment, "input_schema")


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ({"type": "string", "pattern": "(a)\\1"}, "needs a backtracking regex engine"),
        ({"type": "string", "pattern": "^(?!x)"}, "needs a backtracking regex engine"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties is not supported"),
    ],
)
def test_schemas_only_a_backtracking_engine_evaluates(api, member, iris_file, schema, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, input_schema=json.dumps(schema)), 400, fragment, "input_schema")


def test_a_pattern_is_matched_in_linear_time(api, member, iris_file, nothing_left):
    """The sample is checked against the declared schema with RE2, as the gateways check calls."""
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}
    hostile = {"instances": [{"code": "a" * 100_000 + "!"}]}
    response = register(
        api(member), "iris", iris_file, input_schema=json.dumps(schema), sample_input=json.dumps(hostile)
    )
    refused(response, 400, "does not match the input schema", "sample_input")


def test_sample_that_does_not_match_the_declared_schema(api, member, iris_file, nothing_left):
    schema = json.dumps(
        {"type": "object", "properties": {"sepal_length": {"type": "string"}}, "required": ["sepal_length"]}
    )
    refused(
        register(api(member), "iris", iris_file, input_schema=schema),
        400,
        "does not match the input schema",
        "sample_input",
    )


def test_predictions_that_do_not_match_the_declared_output_schema(api, member, iris_file, nothing_left):
    body = refused(
        register(api(member), "iris", iris_file, output_schema='{"type": "string"}'),
        400,
        "do not match the output schema",
    )
    assert "output_schema" in body["errors"]


def test_digest_mismatch(api, member, iris_file, nothing_left):
    refused(register(api(member), "iris", iris_file, sha256="0" * 64), 400, "changed or cut short", "sha256")


def test_malformed_digest(api, member, iris_file, nothing_left):
    refused(register(api(member), "iris", iris_file, sha256="abc"), 400, "64 hexadecimal", "sha256")


def test_too_large_while_streaming(api, member, iris_file, settings, nothing_left):
    settings.ARTIFACT_MAX_BYTES = 100
    assert iris_file.stat().st_size > 100
    body = refused(register(api(member), "iris", iris_file), 413, "larger than the limit")
    assert "ARTIFACT_MAX_BYTES" in body["detail"]


def test_too_large_by_content_length_before_reading(api, member, iris_file, settings, nothing_left):
    settings.ARTIFACT_MAX_BYTES = 100
    settings.REGISTRY_JSON_PART_MAX_BYTES = 100
    assert iris_file.stat().st_size > 200
    refused(register(api(member), "iris", iris_file), 413, "larger than the limit")


def test_oversized_json_part(api, member, iris_file, settings, tmp_path, nothing_left):
    settings.REGISTRY_JSON_PART_MAX_BYTES = 50
    big = tmp_path / "sample.json"
    big.write_text(sample())
    with open(iris_file, "rb") as artifact, open(big, "rb") as part:
        response = api(member).post(
            "/api/v1/models/iris/versions",
            {"version": "1.0.0", "flavor": "sklearn", "artifact": artifact, "sample_input": part},
            format="multipart",
        )
    refused(response, 413, "only the artifact may be large")


def test_missing_sample_input(api, member, iris_file, nothing_left):
    refused(
        register(api(member), "iris", iris_file, sample_input=None), 400, "sample input is required", "sample_input"
    )


@pytest.mark.parametrize("value", ["[]", '{"instances": []}', '"text"', "42"])
def test_sample_input_that_is_not_a_list_of_instances(api, member, iris_file, value, nothing_left):
    refused(register(api(member), "iris", iris_file, sample_input=value), 400, "non-empty list of instances")


def test_missing_artifact(api, member, nothing_left):
    response = api(member).post(
        "/api/v1/models/iris/versions",
        {"version": "1.0.0", "flavor": "sklearn", "sample_input": sample()},
        format="multipart",
    )
    refused(response, 400, "attach the model file", "artifact")


def test_empty_artifact(api, member, tmp_path, nothing_left):
    path = tmp_path / "empty.joblib"
    path.write_bytes(b"")
    refused(register(api(member), "iris", path), 400, "The artifact is empty")


def test_unknown_field(api, member, iris_file, nothing_left):
    refused(register(api(member), "iris", iris_file, colour="blue"), 400, "Unknown field(s): colour")


@pytest.mark.parametrize(
    "metrics, fragment",
    [
        ('{"accuracy": "high"}', "finite number"),
        ("[0.9]", "must be a JSON object"),
        ('{"nan": NaN}', "NaN and Infinity"),
    ],
)
def test_bad_metrics(api, member, iris_file, metrics, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, metrics=metrics), 400, fragment, "metrics")


def test_json_body_without_an_upload_or_in_another_type(api, member, nothing_left):
    """JSON registers a finished resumable upload; without one it says how to send the file."""
    body = {"version": "1.0.0", "flavor": "sklearn"}
    response = api(member).post("/api/v1/models/iris/versions", body, format="json")
    assert response.status_code == 400 and "finished upload" in response.json()["detail"]
    other = api(member).post("/api/v1/models/iris/versions", "version=1.0.0", content_type="text/plain")
    assert other.status_code == 415


def test_unknown_model(api, member, iris_file):
    refused(register(api(member), "ghost", iris_file), 404, "No model named 'ghost'")


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        ({"name": "Bad Name", "team": "vision"}, 400, "lowercase"),
        ({"name": "iris", "team": "vision"}, 409, "already exists"),
        ({"name": "ok", "team": "atlantis"}, 404, "No team named 'atlantis'"),
        ({"name": "ok"}, 400, "team: This field is required"),
    ],
)
def test_bad_model_creation(api, member, iris_model, payload, status, fragment):
    refused(api(member).post("/api/v1/models", payload, format="json"), status, fragment)


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("parameters", '{"alpha": NaN}', "NaN and Infinity"),
        ("metrics", '{"accuracy": Infinity}', "NaN and Infinity"),
        ("metrics", '{"acc": ' + "9" * 400 + "}", "finite number"),
        ("sample_input", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("parameters", '{"n": ' + "1" * 5000 + "}", "not valid JSON"),
    ],
)
def test_json_that_cannot_be_stored(api, member, iris_file, field, value, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, **{field: value}), 400, fragment, field)


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ('{"$ref": "http://169.254.169.254/latest/meta-data/"}', "points outside the schema"),
        ('{"$ref": "#/$defs/missing"}', "does not point to anything"),
    ],
)
def test_schema_references_are_local_only(api, member, iris_file, schema, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, input_schema=schema), 400, fragment, "input_schema")


def nested_list(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def nested_schema(levels: int) -> dict:
    schema: dict = {"type": "number"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        # Every gateway walks each route's schemas: what the registry takes is bounded.
        ("input_schema", json.dumps(nested_schema(70)), "at most 64 are allowed"),
        ("output_schema", json.dumps(nested_schema(70)), "at most 64 are allowed"),
        ("input_schema", json.dumps({"type": "object", "description": "x" * 70_000}), "bytes as JSON"),
        ("sample_input", json.dumps({"instances": [json.loads(nested_list(25))]}), "nests 25 levels deep"),
    ],
)
def test_schemas_and_samples_beyond_the_documented_limits(api, member, iris_file, field, value, fragment, nothing_left):
    refused(register(api(member), "iris", iris_file, **{field: value}), 400, fragment, field)


def test_a_sample_within_the_limit_whose_inferred_schema_is_too_large(api, member, tmp_path, nothing_left):
    path = tmp_path / "wide.py"
    path.write_text("def predict(instances):\n    return [0 for _ in instances]\n")
    wide = [{f"field_{n:05d}_{'x' * 40}": 1.0 for n in range(i * 500, (i + 1) * 500)} for i in range(3)]
    body = refused(
        register(api(member), "iris", path, flavor="pyfunc", sample_input=json.dumps({"instances": wide})),
        400,
        "inferred from the sample input is too large",
        "sample_input",
    )
    assert "Declare an input_schema" in body["detail"]


def test_predictions_nested_too_deeply_to_serve(api, member, tmp_path, nothing_left):
    path = tmp_path / "deep.py"
    path.write_text(f"def predict(instances):\n    return [{nested_list(30)} for _ in instances]\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "A prediction for the sample input (0) nests")


def test_predictions_that_are_not_json(api, member, tmp_path, nothing_left):
    path = tmp_path / "nan.py"
    path.write_text("def predict(instances):\n    return [float('nan') for _ in instances]\n")
    refused(register(api(member), "iris", path, flavor="pyfunc"), 400, "not JSON")


def test_two_artifact_parts(api, member, iris_file, nothing_left):
    with open(iris_file, "rb") as first, open(iris_file, "rb") as second:
        response = api(member).post(
            "/api/v1/models/iris/versions",
            {"version": "1.0.0", "flavor": "sklearn", "sample_input": sample(), "artifact": [first, second]},
            format="multipart",
        )
    refused(response, 400, "one artifact per registration")


def test_a_failed_csrf_check_leaves_no_staged_upload(member, iris_file, nothing_left):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    with open(iris_file, "rb") as handle:
        response = client.post(
            "/api/v1/models/iris/versions",
            {"version": "1.0.0", "flavor": "sklearn", "sample_input": sample(), "artifact": handle},
        )
    assert response.status_code == 403
    assert not list(artifact_store().staging_dir.glob("*.part"))
