"""Ground truth for logged predictions: over the API, the Python client and the command."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings

from deployments import services
from monitoring import tasks
from monitoring.store import PredictionStore
from portal.demo_models import iris_instances
from tests.factories import bearer_client, deploy_now
from tests.support import call, eventually

pytestmark = pytest.mark.django_db(transaction=True)

OLD_UNKNOWN = "00000000001" + "ab" * 5  # made in 1970: long enough ago to be in the log if it were real


@pytest.fixture
def logged(iris_service, owner, service_account, environments, gateway, consumer) -> list[str]:
    """Three predictions of iris-api through the real gateway, drained into the log: their ids."""
    deploy_now(iris_service, owner, environments["development"], iris_service.model.versions.get())
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    url = f"{gateway.url}/serve/development/iris-api/v1/predict"
    ids = []
    for _ in range(3):
        _code, answer, _ = eventually(
            lambda: (r := call(url, token=consumer, body={"instances": iris_instances(count=1)}))[0] == 200 and r
        )
        ids.append(answer["prediction_id"])
    eventually(lambda: tasks.drain_predictions() >= 0 and len(_known(ids)) == 3, timeout=10, interval=0.3)
    return ids


def _known(ids: list[str]) -> set[str]:
    return PredictionStore(settings.PREDICTION_LOG_ROOT).known_ids("iris-api", ids)


def _latest_actuals() -> dict[str, object]:
    from duckdb import connect

    files = str(settings.PREDICTION_LOG_ROOT / "feedback" / "service=iris-api" / "day=*" / "*.parquet")
    rows = connect().execute(
        "SELECT prediction_id, arg_max(actual, received_at) FROM read_parquet(?) GROUP BY prediction_id", [files]
    )
    return {pid: json.loads(actual) for pid, actual in rows.fetchall()}


def test_outcomes_are_kept_replaced_when_sent_again_and_unknown_ids_reported(logged, consumer, api):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {consumer}")  # a caller's invoke token may send them
    sent = [
        {"prediction_id": logged[0], "actual": 0},
        {"prediction_id": logged[1], "actual": 2},
        {"prediction_id": OLD_UNKNOWN, "actual": 1},
    ]
    answer = client.post("/api/v1/services/iris-api/feedback", sent, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"accepted": 2, "pending": [], "unknown": [OLD_UNKNOWN]}
    time.sleep(0.01)
    again = client.post(
        "/api/v1/services/iris-api/feedback", [{"prediction_id": logged[1], "actual": 1}], format="json"
    )
    assert again.json()["accepted"] == 1
    assert _latest_actuals() == {logged[0]: 0, logged[1]: 1}

    # A fresh id not in the log yet (the drain runs every 2 s) is kept, and said to be pending.
    fresh = f"{int(time.time() * 1000):011x}" + "cd" * 5
    pending = client.post("/api/v1/services/iris-api/feedback", [{"prediction_id": fresh, "actual": 0}], format="json")
    assert pending.json() == {"accepted": 1, "pending": [fresh], "unknown": []}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"prediction_id": "x", "actual": 1}, "JSON array"),
        ([], "JSON array"),
        ([{"prediction_id": "not-an-id", "actual": 1}], "is not a prediction id"),
        ([{"prediction_id": OLD_UNKNOWN}], 'exactly "prediction_id" and "actual"'),
        ([{"prediction_id": OLD_UNKNOWN, "actual": None}], "missing"),
        ([{"prediction_id": OLD_UNKNOWN, "actual": "x" * 70_000}], "larger than"),
    ],
)
def test_malformed_outcomes_are_refused_saying_which_and_why(iris_service, owner, api, body, fragment):
    answer = api(owner).post("/api/v1/services/iris-api/feedback", body, format="json")
    assert answer.status_code == 400 and fragment in answer.json()["detail"], answer.content


def test_only_those_granted_or_the_team_may_send_outcomes(iris_service, outsider, service_account, member, api):
    body = [{"prediction_id": OLD_UNKNOWN, "actual": 1}]
    assert api(outsider).post("/api/v1/services/iris-api/feedback", body, format="json").status_code == 404
    ungranted = api(service_account, scopes=["invoke"])
    assert ungranted.post("/api/v1/services/iris-api/feedback", body, format="json").status_code == 404
    read_only = api(member, scopes=["read"]).post("/api/v1/services/iris-api/feedback", body, format="json")
    assert read_only.status_code == 403 and "'write' or 'invoke'" in read_only.json()["detail"]
    assert api(member).post("/api/v1/services/iris-api/feedback", body, format="json").status_code == 200


@pytest.mark.cli
def test_the_command_pushes_a_csv_file_and_the_client_a_json_one(logged, service_account, owner, cli, tmp_path):
    from portal_client.client import Client

    token = bearer_client(service_account, scopes=["invoke"]).raw_token
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text(f"prediction_id,actual\n{logged[0]},2\n{logged[1]},1\n{OLD_UNKNOWN},0\n")
    pushed = cli("feedback", "push", str(csv_file), "--service", "iris-api", PORTAL_TOKEN=token)
    assert pushed.returncode == 0, pushed.stderr
    assert "2 outcome(s) kept for iris-api" in pushed.stderr and f"not kept: {OLD_UNKNOWN}" in pushed.stderr

    json_file = tmp_path / "outcomes.jsonl"
    json_file.write_text(json.dumps({"prediction_id": logged[2], "actual": 0}) + "\n")
    result = Client(url=cli.url, token=token).send_feedback_file("iris-api", json_file)
    assert result == {"accepted": 1, "pending": [], "unknown": []}
    assert _latest_actuals() == {logged[0]: 2, logged[1]: 1, logged[2]: 0}

    # What it comes to, from the command (the team reads it; a consumer's invoke token may not).
    reader = bearer_client(owner).raw_token
    shown = cli("services", "performance", "iris-api", "--env", "development", PORTAL_TOKEN=reader)
    assert shown.returncode == 0, shown.stderr
    assert "1.0.0 · classification · 3 labelled" in shown.stdout and "accuracy" in shown.stdout
    as_json = cli("services", "performance", "iris-api", "--env", "development", "--json", PORTAL_TOKEN=reader)
    shown_json = json.loads(as_json.stdout)
    assert shown_json["quality"][0]["labelled"] == 3 and shown_json["alert_rules"] == []

    missing = tmp_path / "bad.csv"
    missing.write_text("id,label\n1,2\n")
    refused = cli("feedback", "push", str(missing), "--service", "iris-api", PORTAL_TOKEN=token)
    assert refused.returncode == 2 and "needs the columns prediction_id and actual" in refused.stderr
