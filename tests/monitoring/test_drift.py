"""Drift with real parts: reference data profiled from real files, logged inputs in real
Parquet files, binned and scored by DuckDB, against numbers worked out by hand."""

from __future__ import annotations

import io
import json
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import AuditEvent
from monitoring import drift, tasks
from monitoring.models import DriftScore
from monitoring.store import PredictionStore
from portal.demo_models import IRIS_FIELDS, iris_csv

pytestmark = pytest.mark.django_db

REFERENCE = "/api/v1/models/iris/versions/1.0.0/reference"


def put_reference(client, name: str, data: bytes):
    return client.put(REFERENCE, {"file": SimpleUploadedFile(name, data)}, format="multipart")


def log_inputs(instances: list[dict], *, version: str = "1.0.0", at: float | None = None) -> None:
    """One logged single-instance prediction of iris-api in development per instance."""
    now = at or time.time()
    PredictionStore(settings.PREDICTION_LOG_ROOT).write(
        [
            [
                f"{int(now * 1000) + n:011x}" + f"{n:010x}",
                now,
                "iris-api",
                "development",
                1,
                version,
                1,
                200,
                1.0,
                1,
                json.dumps({"instances": [instance]}),
                json.dumps({"predictions": [0]}),
            ]
            for n, instance in enumerate(instances)
        ]
    )


def flowers(count: int, *, shift: float = 0.0, seed: int = 1) -> list[dict]:
    from sklearn.datasets import load_iris

    data = load_iris().data
    rng = random.Random(seed)
    rows = [data[rng.randrange(len(data))] for _ in range(count)]
    return [
        {**dict(zip(IRIS_FIELDS, map(float, row), strict=True)), "petal_length": float(row[2]) + shift} for row in rows
    ]


def test_a_reference_is_profiled_from_csv_parquet_or_json_and_replaces_the_sample(iris_service, member, api):
    client = api(member)
    default = client.get(REFERENCE).json()
    assert default["source"] == "sample" and default["rows"] == 3 and default["too_small"] is True

    answer = put_reference(client, "validation.csv", iris_csv())
    assert answer.status_code == 200, answer.content
    profile = answer.json()
    assert profile["source"] == "upload" and profile["rows"] == 150 and profile["too_small"] is False
    petal = next(f for f in profile["features"] if f["name"] == "petal_length")
    assert petal["kind"] == "number" and (petal["min"], petal["max"]) == (1.0, 6.9)
    assert len(petal["edges"]) == 9 and sum(petal["expected"]) == pytest.approx(1.0)
    assert AuditEvent.objects.filter(action="model_version.reference", target_repr="iris 1.0.0").exists()

    table = pa.table({name: [1.0, 2.0, None] for name in IRIS_FIELDS} | {"species": ["a", "b", "c"]})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    as_parquet = put_reference(client, "v.parquet", parquet.getvalue()).json()
    assert as_parquet["rows"] == 3 and as_parquet["features"][0]["missing"] == pytest.approx(1 / 3)

    as_json = put_reference(client, "v.json", json.dumps({"instances": flowers(120)}).encode()).json()
    assert as_json["rows"] == 120 and client.get(REFERENCE).json()["rows"] == 120


def test_a_reference_that_does_not_fit_the_inputs_is_refused_with_what_is_missing(iris_service, member, viewer, api):
    missing = put_reference(api(member), "v.csv", b"sepal_length,sepal_width\n1,2\n")
    assert missing.status_code == 400
    assert "no column for the input fields petal_length, petal_width" in missing.json()["detail"]
    assert put_reference(api(member), "v.csv", b"").status_code == 400
    garbled = put_reference(api(member), "v.json", b"[1, 2")
    assert garbled.status_code == 400 and "neither JSON nor JSON lines" in garbled.json()["detail"]
    no_file = api(member).put(REFERENCE, {}, format="multipart")
    assert no_file.status_code == 400 and "'file'" in no_file.json()["detail"]
    assert put_reference(api(viewer), "v.csv", iris_csv()).status_code == 403
    assert api(member).get(REFERENCE).json()["source"] == "sample"  # nothing changed


def test_psi_matches_the_hand_computed_case():
    # expected (0.5, 0.5), live (0.9, 0.1): 0.4 ln(1.8) + (-0.4) ln(0.2)
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * 0.587787 + 0.4 * 1.609438, rel=1e-5)
    assert drift.psi([0.25] * 4, [0.25] * 4) == 0.0


def test_drift_flags_the_shifted_feature_and_not_the_others(iris_service, member, api):
    put_reference(api(member), "validation.csv", iris_csv())
    log_inputs(flowers(400, shift=2.0, seed=3) + [{"sepal_length": 5.0, "sepal_width": 3.0, "petal_width": 1.0}] * 10)

    assert tasks.score_drift() == 4
    scores = {s.feature: s for s in DriftScore.objects.filter(version="1.0.0")}
    assert scores["petal_length"].psi > 0.25
    for feature in ("sepal_length", "sepal_width", "petal_width"):
        assert scores[feature].psi < 0.1, (feature, scores[feature].psi)
    assert scores["petal_length"].count == 410 and scores["petal_length"].missing_rate == pytest.approx(10 / 410)
    assert scores["sepal_length"].missing_rate == 0.0
    # Shifted by 2 cm, every petal longer than 4.9 cm is beyond the reference's 6.9.
    beyond = sum(1 for f in flowers(400, shift=2.0, seed=3) if f["petal_length"] > 6.9)
    assert scores["petal_length"].out_of_range_rate == pytest.approx(beyond / 400)
    assert scores["petal_length"].reference_rows == 150

    answer = api(member).get("/api/v1/services/iris-api/drift", {"environment": "development"})
    assert answer.status_code == 200 and answer.json()["count"] == 4
    assert {r["feature"] for r in answer.json()["results"]} == set(IRIS_FIELDS)
    one = api(member).get("/api/v1/services/iris-api/drift", {"environment": "development", "feature": "petal_length"})
    assert [r["psi"] > 0.25 for r in one.json()["results"]] == [True]
    other = api(member).get("/api/v1/services/iris-api/drift", {"environment": "development", "version": "9.9.9"})
    assert other.json()["count"] == 0
    assert tasks.score_drift() == 4  # the same hour is rescored, not added to
    assert DriftScore.objects.count() == 4


def test_unseen_categories_and_wrong_types_count_as_out_of_range_and_missing():
    feature = {"name": "c", "kind": "category", "categories": ["x", "y"], "expected": [0.5, 0.5, 0.0]}
    scored = drift._drift(feature, {0: 40, 1: 40, 2: 20, drift.MISSING: 25})
    assert scored.count == 125 and scored.missing_rate == pytest.approx(0.2)
    assert scored.out_of_range_rate == pytest.approx(0.2)
    assert scored.psi > 0.25


def test_the_page_shows_the_heat_map_and_the_version_page_the_reference(iris_service, member, api):
    client = Client()
    client.force_login(member)
    version_page = client.get("/models/iris/versions/1.0.0/").content.decode()
    assert "too small to judge drift" in version_page
    uploaded = client.post(
        "/models/iris/versions/1.0.0/reference", {"file": SimpleUploadedFile("val.csv", iris_csv())}, follow=True
    )
    assert "Reference data set: 150 rows of val.csv." in uploaded.content.decode()
    assert "too small to judge drift" not in uploaded.content.decode()

    log_inputs(flowers(200, shift=2.0))
    tasks.score_drift()
    html = client.get("/services/iris-api/performance/?environment=development").content.decode()
    assert 'class="heatmap"' in html and "<code>petal_length</code>" in html
    assert 'class="cell alert"' in html and 'class="cell ok"' in html


def test_drift_thresholds_are_set_by_the_team_and_audited(iris_service, owner, member, outsider, api):
    url = "/api/v1/services/iris-api/drift-thresholds"
    assert api(member).get(url).json()["psi_alert"] == 0.25
    assert api(member).patch(url, {"psi_alert": 0.3}, format="json").status_code == 403
    changed = api(owner).patch(url, {"psi_warn": 0.15, "psi_alert": 0.3}, format="json")
    assert changed.status_code == 200 and changed.json()["psi_alert"] == 0.3
    upside_down = api(owner).patch(url, {"psi_warn": 0.5}, format="json")
    assert upside_down.status_code == 400 and "psi_warn" in upside_down.json()["detail"]
    typo = api(owner).patch(url, {"psi_alrt": 0.5}, format="json")
    assert typo.status_code == 400
    assert AuditEvent.objects.filter(action="monitoring.change").count() == 1
    assert api(outsider).get(url).status_code == 404
    assert api(outsider).get("/api/v1/services/iris-api/drift", {"environment": "development"}).status_code == 404
