"""Writes of monitoring: ground truth for logged predictions."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from accounts.models import User
from core.errors import InvalidInput, NotAllowed, PayloadTooLarge
from deployments.models import Service
from monitoring.selectors import may_send_feedback
from monitoring.tasks import store

FEEDBACK_MAX_ITEMS = 10_000
FEEDBACK_FILE_MAX_BYTES = 20 * 1024 * 1024
ACTUAL_MAX_BYTES = 64 * 1024
# An id this recent may still be on its way from the gateway to the log: kept, reported pending.
PENDING_SECONDS = 120
PREDICTION_ID = re.compile(r"[0-9a-f]{21}")


@dataclass
class FeedbackResult:
    accepted: int = 0
    pending: list[str] = field(default_factory=list)  # not in the log yet, but recent: kept
    unknown: list[str] = field(default_factory=list)  # not predictions of this service: not kept


def feedback_record(*, actor: User, service: Service, items: Any) -> FeedbackResult:
    """Store the actual outcomes (`[{"prediction_id", "actual"}]`) of logged predictions of
    `service`. Sending an id again replaces what was sent before. Ids that are not the
    service's predictions are reported back and not kept."""
    if not may_send_feedback(actor, service):
        raise NotAllowed(f"'{actor.username}' may not send ground truth for '{service.name}': it needs a grant.")
    if not isinstance(items, list) or not items:
        raise InvalidInput('Send a JSON array of {"prediction_id": ..., "actual": ...} objects.')
    if len(items) > FEEDBACK_MAX_ITEMS:
        raise PayloadTooLarge(f"At most {FEEDBACK_MAX_ITEMS} outcomes per request; this one has {len(items)}.")
    actuals: dict[str, str] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"prediction_id", "actual"}:
            raise InvalidInput(f'Item {n} must be an object with exactly "prediction_id" and "actual".')
        prediction_id = item["prediction_id"]
        if not isinstance(prediction_id, str) or not PREDICTION_ID.fullmatch(prediction_id):
            raise InvalidInput(f"Item {n}: {prediction_id!r} is not a prediction id (21 hex digits, X-Prediction-Id).")
        if item["actual"] is None:
            raise InvalidInput(f"Item {n}: the actual outcome is missing (null).")
        try:
            actual = json.dumps(item["actual"], separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise InvalidInput(f"Item {n}: the actual outcome is not JSON (NaN or Infinity).") from None
        if len(actual) > ACTUAL_MAX_BYTES:
            raise InvalidInput(f"Item {n}: the actual outcome is larger than {ACTUAL_MAX_BYTES} bytes as JSON.")
        actuals[prediction_id] = actual  # the same id twice: the last one counts
    log = store()
    known = log.known_ids(service.name, actuals)
    result = FeedbackResult()
    recent = (time.time() - PENDING_SECONDS) * 1000
    rows = []
    for prediction_id, actual in actuals.items():
        if prediction_id not in known:
            if int(prediction_id[:11], 16) < recent:
                result.unknown.append(prediction_id)
                continue
            result.pending.append(prediction_id)
        rows.append((prediction_id, actual, actor.username))
    if rows:
        log.write_feedback(service.name, rows)
    result.accepted = len(rows)
    return result


def outcomes_from_file(name: str, data: bytes) -> list[dict]:
    """Outcomes in an uploaded file: CSV (by its name; columns prediction_id and actual, an
    actual that reads as JSON is taken as that value) or JSON (an array, or JSON lines)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The file is not UTF-8 text.", field="file") from None
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"prediction_id", "actual"} <= set(reader.fieldnames):
            raise InvalidInput("The CSV file needs a header row with prediction_id and actual.", field="file")
        outcomes = []
        for row in reader:
            try:
                actual = json.loads(row["actual"])
            except ValueError:
                actual = row["actual"]
            outcomes.append({"prediction_id": row["prediction_id"], "actual": actual})
        return outcomes
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise InvalidInput("The file is neither CSV (by its name) nor JSON nor JSON lines.", field="file") from None
    return parsed if isinstance(parsed, list) else [parsed]
