"""Breaking-change messages a person can act on: arrays have no field names, and the
suggested version is one the portal accepts."""

import json

import pytest

from portal_client.errors import error_for
from registry import schemas
from registry.models import ModelVersion
from tests.factories import register

pytestmark = pytest.mark.django_db

SUM = "def predict(instances):\n    return [sum(i) for i in instances]\n"


def rows(width: int) -> str:
    return json.dumps({"instances": [[float(n + k) for k in range(width)] for n in range(3)]})


def messages(changes) -> list[str]:
    return [c.message for c in changes]


def test_array_length_changes_are_said_as_numbers_of_values():
    fixed = lambda n: {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}  # noqa: E731
    changes = schemas.diff(old_input=fixed(13), new_input=fixed(12), old_output={}, new_output={})
    assert messages(changes) == ["Each instance now has 12 values instead of 13."]
    assert changes[0].breaking
    open_ended = {"type": "array", "items": {"type": "number"}}
    changes = schemas.diff(old_input=open_ended, new_input=fixed(4), old_output={}, new_output={})
    assert messages(changes) == ["Each instance now takes exactly 4 values (before: any number of values)."]
    # Looser is compatible, and said so.
    changes = schemas.diff(old_input=fixed(4), new_input=open_ended, old_output={}, new_output={})
    assert [(c.message, c.breaking) for c in changes] == [
        ("Each instance now takes any number of values (before: exactly 4 values).", False)
    ]
    # The values of an array instance have no name either.
    ints = {**fixed(4), "items": {"type": "integer"}}
    changes = schemas.diff(old_input=fixed(4), new_input=ints, old_output={}, new_output={})
    assert messages(changes) == ["Each value of an instance now accepts only integer (before: number)."]
    # A named array field keeps its name.
    obj = lambda n: {"type": "object", "properties": {"pixels": fixed(n)}}  # noqa: E731
    changes = schemas.diff(old_input=obj(3), new_input=obj(2), old_output={}, new_output={})
    assert messages(changes) == ["Input field `pixels` now has 2 values instead of 3."]


def test_a_refused_array_version_names_no_empty_field_and_suggests_an_acceptable_version(
    api, member, iris_model, tmp_path
):
    model = tmp_path / "sum.py"
    model.write_text(SUM)
    client = api(member)
    assert register(client, "iris", model, flavor="pyfunc", sample_input=rows(13)).status_code == 201
    assert register(client, "iris", model, version="2.0.0", flavor="pyfunc", sample_input=rows(13)).status_code == 201

    refused = register(client, "iris", model, version="1.0.1", flavor="pyfunc", sample_input=rows(12))
    assert refused.status_code == 409, refused.content
    body = refused.json()
    assert [c["message"] for c in body["breaking_changes"]] == ["Each instance now has 12 values instead of 13."]
    # 2.0.0 exists: the next major the portal takes is 3.0.0.
    assert "Register it as 3.0.0" in body["detail"] and "2.0.0 (" not in body["detail"]
    # What the CLI and the Python client print: no "Breaking: : ...".
    said = str(error_for(409, body, what="register a version"))
    assert "Each instance now has 12 values instead of 13." in said and ": :" not in said

    accepted = register(client, "iris", model, version="3.0.0", flavor="pyfunc", sample_input=rows(12))
    assert accepted.status_code == 201, accepted.content
    assert ModelVersion.objects.filter(model__name="iris").count() == 3
