"""The Python client of the portal's REST API (what the `portal` command is built on).

    from portal_client import Client

    portal = Client()  # PORTAL_URL / PORTAL_TOKEN, or what `portal login` saved
    portal.register_version("churn", model, version="1.3.0", sample_input=X_test[:5], metrics={"auc": 0.91})
    deployment = portal.deploy("churn-api", "1.3.0", environment="development")
    portal.wait(deployment["id"])
    portal.predict("development", "churn-api", 1, X_test[:2])

Every failure raises a `PortalClientError` whose message is one line for a person.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from portal_client import config, transfer
from portal_client.errors import (
    DeploymentFailed,
    InvalidUsage,
    NotFound,
    NotSignedIn,
    PortalClientError,
    Refused,
    Unreachable,
    error_for,
)
from portal_client.progress import resolve
from portal_client.samples import instances_from, to_json

# Outcomes sent per request (the portal takes up to 10,000).
FEEDBACK_BATCH = 5_000

USER_AGENT = "portal-client/1"
# Statuses a deployment does not leave by itself.
FINAL_STATUSES = {"live", "failed", "rejected", "cancelled", "rolled_back", "superseded", "stopped"}
FAILED_STATUSES = {"failed", "rejected", "cancelled", "rolled_back"}
FLAVOR_BY_SUFFIX = {".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn", ".onnx": "onnx", ".py": "pyfunc"}


class Client:
    """A signed-in connection to one portal.

    `url` and `token` default to PORTAL_URL and PORTAL_TOKEN, then to the config file that
    `portal login` writes. `retries` is how many times a dropped upload is resumed before
    giving up.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0, retries: int = 8
    ) -> None:
        settings = config.load(url=url, token=token)
        self.url = settings.url
        self.token = settings.token
        self.token_source = settings.source
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.trust_env = True

    # ------------------------------------------------------------ plumbing

    def _headers(self, *, auth: bool = True) -> dict[str, str]:
        if not auth:
            return {}
        if not self.token:
            raise NotSignedIn("Not signed in. Run `portal login`, or set PORTAL_TOKEN.")
        return {"Authorization": f"Bearer {self.token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: Any = None,
        params: dict | None = None,
        auth: bool = True,
        expect_json: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One API call; answers the decoded JSON, or raises an error a person can act on."""
        url = path if path.startswith("http") else f"{self.url}{path}"
        headers = {**self._headers(auth=auth), **kwargs.pop("headers", {})}
        if json_body is not None:
            kwargs["data"] = to_json(json_body)
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method, url, params=params, headers=headers, timeout=kwargs.pop("timeout", self.timeout), **kwargs
            )
        except requests.exceptions.ConnectionError as exc:
            raise Unreachable(f"Cannot reach the portal at {self.url} ({_reason(exc)}). Is it running?") from None
        except requests.exceptions.Timeout:
            raise Unreachable(f"The portal at {self.url} did not answer within {self.timeout:.0f} s.") from None
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"Cannot talk to the portal at {self.url}: {_reason(exc)}.") from None
        if response.status_code >= 400:
            raise error_for(response.status_code, _body(response), what=what)
        if not expect_json:
            return response
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise Unreachable(
                f"{url} answered with something that is not JSON. Is {self.url} the portal's address?"
            ) from None

    def _all(self, path: str, *, what: str, params: dict | None = None, limit: int | None = None) -> list[dict]:
        """Every item of a paginated list (or the first `limit`)."""
        items: list[dict] = []
        params = {**(params or {}), "page_size": 200}
        url: str | None = path
        while url:
            page = self.request("GET", url, what=what, params=params)
            params = None  # the `next` link carries them
            if isinstance(page, list):
                return page[:limit] if limit else page
            items += page.get("results", [])
            if limit and len(items) >= limit:
                return items[:limit]
            url = page.get("next")
        return items

    # ------------------------------------------------------------ accounts

    def login(self, username: str, password: str, *, token_name: str | None = None, days: int | None = None) -> dict:
        """Exchange a password for a new token, use it from now on, and answer its details."""
        name = token_name or f"portal CLI on {platform.node() or 'this machine'} {datetime.now():%Y-%m-%d %H:%M:%S}"
        body = {"username": username, "password": password, "name": name[:100]}
        if days:
            body["expires_in_days"] = days
        try:
            created = self.request("POST", "/api/v1/auth/token", what="sign in", json_body=body, auth=False)
        except Refused as exc:
            if exc.status == 429:
                raise
            raise NotSignedIn(exc.message, status=exc.status, body=exc.body) from None  # a wrong password
        self.token = created["token"]
        return created

    def me(self) -> dict:
        return self.request("GET", "/api/v1/users/me", what="read who you are")

    def tokens(self) -> list[dict]:
        return self._all("/api/v1/tokens", what="list your tokens")

    def create_token(self, name: str, *, scopes: list[str] | None = None, days: int | None = None) -> dict:
        body: dict[str, Any] = {"name": name}
        if scopes:
            body["scopes"] = scopes
        if days:
            body["expires_in_days"] = days
        return self.request("POST", "/api/v1/tokens", what="create a token", json_body=body)

    def revoke_token(self, token_id: int) -> None:
        self.request("DELETE", f"/api/v1/tokens/{int(token_id)}", what=f"revoke token {token_id}")

    # ------------------------------------------------------------ registry

    def models(self, *, search: str = "", team: str = "", limit: int | None = None) -> list[dict]:
        params = {k: v for k, v in {"search": search, "team": team}.items() if v}
        return self._all("/api/v1/models", what="list models", params=params, limit=limit)

    def model(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/models/{transfer.segment(name)}", what=f"read model '{name}'")

    def create_model(self, name: str, *, team: str, description: str = "") -> dict:
        body = {"name": name, "team": team, "description": description}
        return self.request("POST", "/api/v1/models", what=f"create model '{name}'", json_body=body)

    def versions(self, name: str) -> list[dict]:
        return self._all(f"/api/v1/models/{transfer.segment(name)}/versions", what=f"list versions of '{name}'")

    def version(self, name: str, version: str) -> dict:
        path = f"/api/v1/models/{transfer.segment(name)}/versions/{transfer.segment(version)}"
        return self.request("GET", path, what=f"read {name} {version}")

    def upload(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int | None = None,
        progress: transfer.Progress | bool | None = None,
        parallel: int | None = None,
    ) -> dict:
        """Upload a file resumably and answer the finished upload (its `id` registers it).

        The file goes in parts of `chunk_size` bytes (default: the portal's), `parallel` at
        once (default 4). An interrupted upload of the same file to the same portal resumes
        where it stopped, in this call (dropped connections are retried) or in a later one.
        """
        return transfer.upload(self, Path(path), chunk_size=chunk_size, progress=resolve(progress), parallel=parallel)

    def register_version(
        self,
        name: str,
        model: Any,
        *,
        version: str,
        flavor: str | None = None,
        sample_input: Any = None,
        input_schema: dict | None = None,
        output_schema: dict | None = None,
        metrics: dict[str, float] | None = None,
        parameters: dict[str, Any] | None = None,
        description: str = "",
        git_commit: str = "",
        data_ref: str = "",
        task: str = "",
        reference: Any = None,
        progress: transfer.Progress | bool | None = None,
        chunk_size: int | None = None,
        parallel: int | None = None,
    ) -> dict:
        """Register a version of model `name` from a file path or a fitted model object.
        `task` ("classification" or "regression") says what its live quality is measured as;
        the portal infers it from the outputs when it is left out. `reference` is the data its
        live inputs are compared with for drift (see `set_reference`); by default the sample.

        A scikit-learn estimator (any object with `predict`) is serialised with joblib. The
        sample input (a DataFrame, a NumPy array, a list of rows or of dicts) is what the
        portal checks the model with; it infers the input and output schemas from it unless
        they are given.
        """
        progress = resolve(progress)
        if sample_input is None:
            raise InvalidUsage("A sample input is required: a few rows the model can predict, e.g. X_test[:5].")
        if isinstance(reference, str | os.PathLike) and not Path(reference).is_file():
            raise InvalidUsage(f"No such file: {reference} (the reference data)")
        instances = instances_from(sample_input, model=None if isinstance(model, str | os.PathLike) else model)
        with tempfile.TemporaryDirectory(prefix="portal-") as tmp:
            if isinstance(model, str | os.PathLike):
                path = Path(model)
                flavor = flavor or FLAVOR_BY_SUFFIX.get(path.suffix.lower())
                if flavor is None:
                    raise InvalidUsage(f"Cannot tell the flavor of {path.name}; give flavor= sklearn, onnx or pyfunc.")
            else:
                path, flavor = _serialise(model, Path(tmp) / f"{name}-{version}.joblib", flavor)
            if not path.is_file():
                raise InvalidUsage(f"No such file: {path}")
            upload = self.upload(path, progress=progress, chunk_size=chunk_size, parallel=parallel)
            body: dict[str, Any] = {
                "upload": upload["id"],
                "version": version,
                "flavor": flavor,
                "sample_input": instances,
                "description": description,
                "git_commit": git_commit,
                "data_ref": data_ref,
                **({"task": task} if task else {}),
            }
            for key, value in (
                ("input_schema", input_schema),
                ("output_schema", output_schema),
                ("metrics", metrics),
                ("parameters", parameters),
            ):
                if value is not None:
                    body[key] = value
            if progress is not None:
                progress.status("Checking that the model loads and predicts its sample input…")
            registered = self.request(
                "POST",
                f"/api/v1/models/{transfer.segment(name)}/versions",
                what=f"register {name} {version}",
                json_body=body,
                timeout=max(self.timeout, 600),
            )
            transfer.forget(self, upload)
            if reference is not None:
                if progress is not None:
                    progress.status("Setting the reference data for drift…")
                try:
                    registered["reference"] = self.set_reference(name, version, reference)
                except PortalClientError as exc:
                    # The version is registered: say so, and how to send the reference again.
                    exc.message = (
                        f"{name} {version} is registered, but its reference data was not set: {exc.message} "
                        f"Send it again with: portal versions reference {name} {version} FILE"
                    )
                    exc.args = (exc.message,)
                    raise
            return registered

    def set_reference(self, name: str, version: str, data: Any) -> dict:
        """Give a version the reference data its live inputs are compared with for drift (the
        validation set, say): a CSV, Parquet or JSON file, or rows as a DataFrame, a NumPy
        array, or a list of rows or dicts. Answers the profile the portal keeps of it."""
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                raise InvalidUsage(f"No such file: {path}")
            filename, content = path.name, path.read_bytes()
        else:
            filename, content = "reference.json", to_json({"instances": instances_from(data)}).encode()
        return self.request(
            "PUT",
            f"/api/v1/models/{transfer.segment(name)}/versions/{transfer.segment(version)}/reference",
            what=f"set the reference data of {name} {version}",
            files={"file": (filename, content)},
            timeout=max(self.timeout, 300),
        )

    def download(
        self,
        name: str,
        version: str,
        dest: str | os.PathLike,
        *,
        progress: transfer.Progress | bool | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Download a version's artifact to `dest` (a file, or a directory where it is saved as
        `<model>-<version><suffix>`), checking its sha256. An existing file is replaced only
        with `overwrite`."""
        return transfer.download(self, name, version, Path(dest), progress=resolve(progress), overwrite=overwrite)

    # ------------------------------------------------------------ services and deployments

    def services(
        self, *, search: str = "", team: str = "", environment: str = "", limit: int | None = None
    ) -> list[dict]:
        """The catalog: every service, with what is live where, its input schema and an example call."""
        params = {k: v for k, v in (("q", search), ("team", team), ("environment", environment)) if v}
        return self._all("/api/v1/services", what="list services", params=params or None, limit=limit)

    # ------------------------------------------------------------ access requests

    def request_access(
        self,
        service: str,
        *,
        reason: str,
        service_account: str | None = None,
        expires: str | None = None,
        days: int | None = None,
    ) -> dict:
        """Ask a service's team for the right to call it (for yourself, or a service account you look after)."""
        body: dict[str, Any] = {"reason": reason}
        if service_account:
            body["service_account"] = service_account
        if expires:
            body["expires_at"] = expires
        if days is not None:
            body["days"] = days
        path = f"/api/v1/services/{transfer.segment(service)}/access-requests"
        return self.request("POST", path, what=f"ask for access to '{service}'", json_body=body)

    def access_requests(
        self,
        *,
        status: str = "",
        service: str = "",
        mine: bool = False,
        to_decide: bool = False,
        limit: int | None = None,
    ) -> list[dict]:
        """Access requests you made or may decide, newest first."""
        params = {k: v for k, v in (("status", status), ("service", service)) if v}
        if mine:
            params["mine"] = "true"
        if to_decide:
            params["to_decide"] = "true"
        return self._all("/api/v1/access-requests", what="list access requests", params=params, limit=limit)

    def decide_access(self, request_id: int, action: str, *, comment: str = "", expires: str | None = None) -> dict:
        """approve, reject or withdraw an access request; `expires` (approve) sets when the grant ends."""
        body: dict[str, Any] = {}
        if action in ("approve", "reject"):
            body["comment"] = comment
        if expires:
            body["expires_at"] = expires
        path = f"/api/v1/access-requests/{int(request_id)}/{action}"
        return self.request("POST", path, what=f"{action} access request {request_id}", json_body=body)

    def service(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/services/{transfer.segment(name)}", what=f"read service '{name}'")

    def create_service(self, name: str, *, team: str, model: str, description: str = "") -> dict:
        """Create a service: the stable name consumers call, serving versions of `model`."""
        body = {"name": name, "team": team, "model": model, "description": description}
        return self.request("POST", "/api/v1/services", what=f"create service '{name}'", json_body=body)

    def grants(self, service: str) -> list[dict]:
        """Who may call the service, with each grant's limits and expiry."""
        path = f"/api/v1/services/{transfer.segment(service)}/grants"
        return self._all(path, what=f"list the grants of '{service}'")

    def add_grant(
        self,
        service: str,
        *,
        user: str | None = None,
        team: str | None = None,
        expires_at: str | None = None,
        rate_per_second: float | None = None,
        burst: int | None = None,
        daily_quota: int | None = None,
    ) -> dict:
        """Let a user (or service account) or a team call the service; optionally until
        `expires_at` (a date or a date and time) and within a rate, a burst and a daily quota."""
        body: dict[str, Any] = {"permission": "invoke"}
        for key, value in (
            ("user", user),
            ("team", team),
            ("expires_at", expires_at),
            ("rate_per_second", rate_per_second),
            ("burst", burst),
            ("daily_quota", daily_quota),
        ):
            if value is not None:
                body[key] = value
        path = f"/api/v1/services/{transfer.segment(service)}/grants"
        return self.request("POST", path, what=f"grant access to '{service}'", json_body=body)

    def revoke_grant(self, service: str, grant_id: int) -> None:
        path = f"/api/v1/services/{transfer.segment(service)}/grants/{int(grant_id)}"
        self.request("DELETE", path, what=f"revoke grant {grant_id} of '{service}'")

    def environments(self) -> list[dict]:
        """The environments, whether a deployment there needs approval, and their runtime."""
        return self._all("/api/v1/environments", what="list environments")

    def catalog_entry(self, name: str) -> dict:
        """A service as the catalog shows it to anyone signed in (also services whose model you may not see)."""
        for entry in self.services(search=name):
            if entry["name"] == name:
                return entry
        raise NotFound(f"No service named '{name}'. Search the catalog: portal services list -q WORDS", status=404)

    def deprecate(self, service: str, major: int, *, sunset: str | None = None, note: str = "") -> dict:
        """Deprecate a major version; `sunset` is a date (YYYY-MM-DD) or an ISO date and time."""
        path = f"/api/v1/services/{transfer.segment(service)}/majors/{int(major)}/deprecation"
        body = {"sunset": sunset, "note": note}
        return self.request("PUT", path, what=f"deprecate {service} v{major}", json_body=body)

    def undeprecate(self, service: str, major: int) -> None:
        path = f"/api/v1/services/{transfer.segment(service)}/majors/{int(major)}/deprecation"
        self.request("DELETE", path, what=f"take back the deprecation of {service} v{major}")

    def deployments(self, service: str, *, limit: int | None = None) -> list[dict]:
        path = f"/api/v1/services/{transfer.segment(service)}/deployments"
        return self._all(path, what=f"list deployments of '{service}'", limit=limit)

    def deploy(
        self,
        service: str,
        version: str,
        *,
        environment: str,
        replicas: int = 1,
        reason: str = "",
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        target_in_flight: int | None = None,
        scale_down_after_seconds: int | None = None,
        strategy: str | None = None,
        steps: list[float] | None = None,
        bake_seconds: int | None = None,
        shadow_percent: int | None = None,
        sticky: bool | None = None,
    ) -> dict:
        """Request a deployment; `target_in_flight` turns autoscaling on (between `min_replicas`
        and `max_replicas`, which default to 1 and the environment's cap). `strategy` "canary"
        (with `steps`, `bake_seconds`, `sticky`) or "shadow" (with `shadow_percent`) tries the
        version beside the live one first; the default is the blue/green switch."""
        body: dict = {"version": version, "environment": environment, "replicas": replicas, "reason": reason}
        optional = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_in_flight": target_in_flight,
            "scale_down_after_seconds": scale_down_after_seconds,
            "strategy": strategy,
            "steps": steps,
            "bake_seconds": bake_seconds,
            "shadow_percent": shadow_percent,
            "sticky": sticky,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        path = f"/api/v1/services/{transfer.segment(service)}/deployments"
        return self.request("POST", path, what=f"deploy {service} {version}", json_body=body)

    def deployment(self, deployment_id: int) -> dict:
        return self.request("GET", f"/api/v1/deployments/{int(deployment_id)}", what=f"read deployment {deployment_id}")

    def logs(self, deployment_id: int, *, tail: int = 200) -> list[dict]:
        path = f"/api/v1/deployments/{int(deployment_id)}/logs"
        return self.request("GET", path, what=f"read logs of deployment {deployment_id}", params={"tail": tail})

    def decide(self, deployment_id: int, action: str, *, comment: str = "") -> dict:
        """approve, reject, cancel or rollback a deployment."""
        path = f"/api/v1/deployments/{int(deployment_id)}/{action}"
        return self.request("POST", path, what=f"{action} deployment {deployment_id}", json_body={"comment": comment})

    def steer(self, deployment_id: int, action: str) -> dict:
        """pause, resume, promote or abort a canary or shadow."""
        path = f"/api/v1/deployments/{int(deployment_id)}/{action}"
        return self.request("POST", path, what=f"{action} deployment {deployment_id}")

    def follow(self, deployment_id: int, *, interval: float = 1.0) -> Iterator[tuple[dict, list[dict]]]:
        """Yield (deployment, new events) as the deployment moves, until it is live or ended."""
        seen: set[int] = set()
        while True:
            deployment = self.deployment(deployment_id)
            new = [e for e in deployment.get("events", []) if e["id"] not in seen]
            seen.update(e["id"] for e in new)
            yield deployment, new
            if deployment["status"] in FINAL_STATUSES:
                return
            time.sleep(interval)

    def wait(self, deployment_id: int, *, timeout: float | None = None, on_event: Callable | None = None) -> dict:
        """Block until the deployment is live (answered) or ends otherwise (DeploymentFailed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for deployment, events in self.follow(deployment_id):
            for event in events:
                if on_event is not None:
                    on_event(event)
            if deadline is not None and time.monotonic() > deadline and deployment["status"] not in FINAL_STATUSES:
                raise PortalClientError(
                    f"Deployment {deployment_id} is still {deployment['status']} after {timeout} s."
                )
        return final(deployment)

    # ------------------------------------------------------------ ground truth

    def send_feedback(self, service: str, outcomes: Any, *, batch: int = FEEDBACK_BATCH) -> dict:
        """Send what really happened for logged predictions: `outcomes` is a list of
        {"prediction_id", "actual"} dicts or (prediction_id, actual) pairs, sent in batches.
        Answers the totals: {"accepted": n, "pending": [...], "unknown": [...]}."""
        items = [
            {"prediction_id": str(o["prediction_id"]), "actual": o["actual"]}
            if isinstance(o, dict)
            else {"prediction_id": str(o[0]), "actual": o[1]}
            for o in outcomes
        ]
        if not items:
            raise InvalidUsage("No outcomes to send.")
        path = f"/api/v1/services/{transfer.segment(service)}/feedback"
        total: dict[str, Any] = {"accepted": 0, "pending": [], "unknown": []}
        for start in range(0, len(items), batch):
            answer = self.request(
                "POST", path, what=f"send ground truth for '{service}'", json_body=items[start : start + batch]
            )
            total["accepted"] += answer["accepted"]
            total["pending"] += answer["pending"]
            total["unknown"] += answer["unknown"]
        return total

    def quality(self, service: str, environment: str, *, days: int = 7) -> list[dict]:
        """Each version's live quality over the last `days` in an environment, beside the
        metrics recorded at registration (newest version first)."""
        return self.request(
            "GET",
            f"/api/v1/services/{transfer.segment(service)}/quality",
            what=f"read the live quality of '{service}'",
            params={"environment": environment, "days": days},
        )

    def performance(self, service: str, environment: str, *, days: int = 7) -> dict:
        """Volume and the live metric per version over time (`days`: 1, 7, 30 or 90), and
        each version's quality over the window."""
        return self.request(
            "GET",
            f"/api/v1/services/{transfer.segment(service)}/performance",
            what=f"read the performance of '{service}'",
            params={"environment": environment, "days": days},
        )

    def drift(self, service: str, environment: str, *, hours: int = 24, version: str = "") -> list[dict]:
        """Each input feature's drift per version and hour over the last `hours` (one version's,
        when given), oldest first."""
        params = {"environment": environment, "hours": hours, **({"version": version} if version else {})}
        path = f"/api/v1/services/{transfer.segment(service)}/drift"
        return self._all(path, what=f"read the drift of '{service}'", params=params)

    def alert_rules(self, service: str, environment: str | None = None) -> list[dict]:
        return self.request(
            "GET",
            f"/api/v1/services/{transfer.segment(service)}/alert-rules",
            what=f"list the alert rules of '{service}'",
            params={"environment": environment} if environment else None,
        )

    def add_alert_rule(
        self,
        service: str,
        environment: str,
        *,
        metric: str,
        threshold: float,
        window_minutes: int = 60,
        min_samples: int = 50,
    ) -> dict:
        """Alert when `metric` crosses `threshold` over the window: quality metrics fire below
        it (MAE and RMSE above), drift, error rate and p95 latency above it."""
        return self.request(
            "POST",
            f"/api/v1/services/{transfer.segment(service)}/alert-rules",
            what=f"add an alert rule to '{service}'",
            json_body={
                "environment": environment,
                "metric": metric,
                "threshold": threshold,
                "window_minutes": window_minutes,
                "min_samples": min_samples,
            },
        )

    def delete_alert_rule(self, rule_id: int) -> None:
        self.request(
            "DELETE", f"/api/v1/alert-rules/{int(rule_id)}", what=f"delete alert rule {rule_id}", expect_json=False
        )

    def alerts(self, service: str, environment: str | None = None, *, limit: int | None = 50) -> list[dict]:
        """When the service's alert rules fired and cleared, newest first."""
        params = {"environment": environment} if environment else None
        path = f"/api/v1/services/{transfer.segment(service)}/alerts"
        return self._all(path, what=f"list the alerts of '{service}'", params=params, limit=limit)

    def send_feedback_file(self, service: str, path: str | os.PathLike) -> dict:
        """send_feedback with outcomes read from a CSV file (columns prediction_id and actual)
        or a JSON file (an array of objects, or one object per line)."""
        return self.send_feedback(service, read_outcomes(Path(path)))

    # ------------------------------------------------------------ serving

    def endpoint(self, environment: str, service: str, major: int) -> str:
        for live in self.service(service).get("live", []):
            if live["environment"] == environment and int(live["major"]) == int(major):
                return live["endpoint"]
        raise NotFound(f"No live v{major} of '{service}' in {environment}. Deploy one first (`portal deploy`).")

    def predict(self, environment: str, service: str, major: int, instances: Any) -> dict:
        """Call a live service through the gateway with your token (it needs the invoke scope and a grant)."""
        url = os.environ.get("PORTAL_GATEWAY_URL")
        url = f"{url.rstrip('/')}/serve/{environment}/{service}/v{int(major)}/predict" if url else None
        url = url or self.endpoint(environment, service, major)
        body = {"instances": instances_from(instances)}
        return self.request("POST", url, what=f"call {service} v{major} in {environment}", json_body=body)


def read_outcomes(path: Path) -> list[dict]:
    """Outcomes from a CSV file (header with prediction_id and actual; an actual that reads
    as JSON, e.g. 3 or 0.5 or true, is sent as that value, otherwise as text) or a JSON file
    (an array of {"prediction_id", "actual"} objects, or one such object per line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidUsage(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"prediction_id", "actual"} <= set(reader.fieldnames):
            raise InvalidUsage(f"{path.name} needs the columns prediction_id and actual (a header row).")
        return [{"prediction_id": row["prediction_id"], "actual": _csv_value(row["actual"])} for row in reader]
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise InvalidUsage(f"{path.name} is neither CSV (by its name) nor JSON, nor JSON lines.") from None
    if isinstance(data, dict):  # one object (or JSON lines with one line)
        data = [data]
    if not isinstance(data, list):
        raise InvalidUsage(f'{path.name} must hold an array of {{"prediction_id", "actual"}} objects.')
    return data


def _csv_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def final(deployment: dict) -> dict:
    """A finished deployment as it is, or DeploymentFailed saying how it ended."""
    if deployment["status"] in FAILED_STATUSES:
        reason = deployment.get("failure_reason") or deployment.get("decision_comment") or ""
        raise DeploymentFailed(
            f"Deployment {deployment['id']} ended {deployment['status'].replace('_', ' ')}"
            + (f": {reason}" if reason else ".")
        )
    return deployment


def _serialise(model: Any, path: Path, flavor: str | None) -> tuple[Path, str]:
    if flavor not in (None, "sklearn"):
        raise InvalidUsage(f"A model object is saved as sklearn (joblib); for {flavor}, pass the file's path.")
    if not callable(getattr(model, "predict", None)):
        raise InvalidUsage(f"{type(model).__name__} has no predict(); pass a fitted model or a file's path.")
    try:
        import joblib
    except ImportError:
        raise InvalidUsage("Saving a model object needs joblib (it comes with scikit-learn).") from None
    joblib.dump(model, path)
    return path, "sklearn"


def _body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text.strip()[:300] or response.reason}
    return body if isinstance(body, dict) else {"detail": json.dumps(body)[:300]}


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "Connection reset",
        "Remote end closed connection",
        "No route to host",
    ):
        if marker in text:
            return marker.lower()
    return text.split(":")[-1].strip(" )'\"") or type(exc).__name__
