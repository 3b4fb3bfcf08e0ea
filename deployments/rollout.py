"""Make the runtime match what was approved: blue/green rollouts, scaling, supervision.

Canary and shadow deployments are provisioned here too; deployments/strategies.py then tries
them beside the live version instead of switching at once.

Everything here is safe to run twice or to resume after the worker running it died:
instances have stable names (starting one again adopts the running process), each step's
event is written once, and a deployment is worked on only by the worker holding its lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import AuditAction
from accounts.services import audit_event_record
from core.net import http_request
from deployments import publish, states
from deployments.models import Deployment, Instance, InstanceState, Status, Strategy
from deployments.runtime import BackendUnavailable, InstanceSpec, RuntimeBackend, get_backend
from registry import schemas
from registry.storage import artifact_store

log = logging.getLogger(__name__)


class RolloutFailed(Exception):
    pass


MAX_RESTARTS = 5


class LeaseLost(Exception):
    """Another worker took this deployment over (this one was too slow to renew): stop, touch nothing."""


# ---------------------------------------------------------------- leases


def claim(deployment_id: int, owner: str) -> bool:
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(lease_owner=owner)
    expires = now + timedelta(seconds=settings.DEPLOYMENT_LEASE_SECONDS)
    return Deployment.objects.filter(free, pk=deployment_id).update(lease_owner=owner, lease_expires_at=expires) == 1


def renew(deployment_id: int, owner: str) -> None:
    expires = timezone.now() + timedelta(seconds=settings.DEPLOYMENT_LEASE_SECONDS)
    if not Deployment.objects.filter(pk=deployment_id, lease_owner=owner).update(lease_expires_at=expires):
        raise LeaseLost(f"deployment {deployment_id} is no longer held by {owner}")


def release(deployment_id: int, owner: str) -> None:
    Deployment.objects.filter(pk=deployment_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


# ---------------------------------------------------------------- HTTP checks of an instance


def _get(base: str, path: str, timeout: float = 2.0) -> int:
    """The status an instance (its URL: http:// or unix:) answers `path` with; 0 if none."""
    try:
        return http_request(base, path, timeout=timeout)[0]
    except OSError:
        return 0


def _post_json(base: str, path: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        status, data = http_request(base, path, method="POST", body=json.dumps(body).encode(), timeout=timeout)
    except OSError as exc:
        return 0, {"error": str(exc)}
    try:
        answer = json.loads(data or b"{}")
    except ValueError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}


# ---------------------------------------------------------------- instances


def instance_name(deployment: Deployment, replica: int) -> str:
    # The unique part comes first, so cutting a long service name never makes two alike.
    name = f"d{deployment.pk}-r{replica}-{deployment.environment.name}-{deployment.service.name}-v{deployment.major}"
    return name[:100]


def _spec(deployment: Deployment, name: str, owner: str = "") -> InstanceSpec:
    version = deployment.version
    environment = deployment.environment
    return InstanceSpec(
        name=name,
        artifact=artifact_store().local_path(version.artifact.sha256),
        flavor=version.flavor,
        version=version.version,
        field_order=schemas.field_order(version.input_schema) or [],
        service=deployment.service.name,
        deployment=deployment.pk,
        artifact_sha256=version.artifact.sha256,
        memory_mb=environment.memory_mb,
        cpus=float(environment.cpus),
        allow_unsandboxed=environment.allow_unsandboxed,
        placement=tuple(environment.placement or ()),
        # Image builds stream into the deployment's event log while they run, and keep
        # this worker's lease alive however long they take.
        log=lambda line: (states.event(deployment, line[:2000]), owner and renew(deployment.pk, owner)),
    )


def _start(deployment: Deployment, backend: RuntimeBackend, replica: int, owner: str = "") -> Instance:
    name = instance_name(deployment, replica)
    # The row exists before the process: a process is never without its row, so the
    # reconciler can always tell its own instances from orphans.
    instance, _ = Instance.objects.get_or_create(
        name=name, defaults={"deployment": deployment, "backend": backend.name}
    )
    try:
        status = backend.start(_spec(deployment, name, owner))
    except Exception as exc:
        raise RolloutFailed(f"Could not start {name}: {exc}") from exc
    Instance.objects.filter(pk=instance.pk).update(url=status.url, state=InstanceState.STARTING)
    instance.url, instance.state = status.url, InstanceState.STARTING
    states.event(deployment, f"Started instance {name} at {status.url}.", step=f"start:{name}")
    return instance


def _wait_ready(deployment: Deployment, backend: RuntimeBackend, instance: Instance, owner: str) -> None:
    deadline = time.monotonic() + settings.RUNTIME_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if _get(instance.url, "/health/ready") == 200:
            states.event(deployment, f"Instance {instance.name} is ready.", step=f"ready:{instance.name}")
            return
        if not backend.status(instance.name).running:
            tail = backend.logs(instance.name, tail=5)
            raise RolloutFailed(f"Instance {instance.name} exited while starting. Its last log lines:\n{tail}")
        renew(deployment.pk, owner)
        time.sleep(0.2)
    raise RolloutFailed(
        f"Instance {instance.name} was not ready within {settings.RUNTIME_READY_TIMEOUT_SECONDS} s "
        "(RUNTIME_READY_TIMEOUT_SECONDS)."
    )


def _smoke_test(deployment: Deployment, instance: Instance) -> None:
    sample = deployment.version.sample_input or []
    status, body = _post_json(instance.url, "/predict", {"instances": sample})
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if status != 200 or not isinstance(predictions, list) or len(predictions) != len(sample):
        raise RolloutFailed(
            f"Smoke test of {instance.name} with the version's sample input failed: HTTP {status} "
            f"{body.get('error', '') if isinstance(body, dict) else ''}".strip()
        )
    states.event(
        deployment,
        f"Smoke test of {instance.name} passed: {len(predictions)} predictions for the sample input.",
        step=f"smoke:{instance.name}",
    )


def _stop(backend: RuntimeBackend, instance: Instance, deployment: Deployment, reason: str) -> None:
    Instance.objects.filter(pk=instance.pk).exclude(state=InstanceState.STOPPED).update(state=InstanceState.DRAINING)
    backend.stop(instance.name, drain_seconds=settings.RUNTIME_DRAIN_SECONDS)
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.STOPPED, stopped_at=timezone.now())
    states.event(deployment, f"Stopped instance {instance.name} {reason}.", step=f"stop:{instance.name}")


# ---------------------------------------------------------------- rollout


def _starting_message(deployment: Deployment) -> str:
    """The provisioning event: beside which live version the new instances start, if any."""
    n = deployment.replicas
    what = f"Starting {n} instance{'s' if n != 1 else ''} of {deployment.version.version}"
    live = (
        Deployment.objects.filter(
            service=deployment.service, environment=deployment.environment, major=deployment.major, status=Status.LIVE
        )
        .exclude(pk=deployment.pk)
        .select_related("version")
        .first()
    )
    if live is None:
        return f"{what} (nothing is live yet)."
    return f"{what} beside the live one ({live.version.version})."


def rollout(deployment_id: int, *, owner: str) -> str:
    """Carry an approved deployment to live (or failed); finish a half-done switch."""
    if not claim(deployment_id, owner):
        return "busy"
    try:
        deployment = Deployment.objects.select_related("service", "environment", "version__artifact").get(
            pk=deployment_id
        )
        if deployment.status == Status.APPROVED:
            states.transition(deployment, Status.PROVISIONING, message=_starting_message(deployment))
        if deployment.status == Status.PROVISIONING:
            try:
                backend = get_backend(deployment.environment.runtime)
            except BackendUnavailable as exc:
                _fail(deployment, None, str(exc))
                return deployment.status
            try:
                _provision(deployment, backend, owner)
            except LeaseLost:
                return "lease lost"
            except RolloutFailed as exc:
                _fail(deployment, backend, str(exc), owner)
            except Exception as exc:
                log.exception("rollout of deployment %s failed unexpectedly", deployment_id)
                _fail(deployment, backend, f"Unexpected error: {type(exc).__name__}: {exc}", owner)
        if deployment.status in states.TRYING_STATUSES:
            from deployments import strategies  # strategies imports this module

            strategies.announce(deployment)  # judged and stepped by deployments.advance_candidates
        if deployment.status == Status.LIVE and route_switched(deployment):
            retire_superseded(deployment)
        return deployment.status
    finally:
        release(deployment_id, owner)


def _provision(deployment: Deployment, backend: RuntimeBackend, owner: str) -> None:
    if not artifact_store().exists(deployment.version.artifact.sha256):
        raise RolloutFailed(f"The artifact of {deployment.version} is missing from the artifact store.")
    instances = [_start(deployment, backend, replica, owner) for replica in range(deployment.replicas)]
    for instance in instances:
        _wait_ready(deployment, backend, instance, owner)
    for instance in instances:
        _smoke_test(deployment, instance)
        renew(deployment.pk, owner)
    Instance.objects.filter(pk__in=[i.pk for i in instances]).update(state=InstanceState.READY)
    if deployment.strategy != Strategy.BLUE_GREEN:
        from deployments import strategies  # strategies imports this module

        if strategies.begin(deployment):
            return
    _switch(deployment)


def _switch(deployment: Deployment) -> bool:
    """Make `deployment` the live one of its route, atomically (from provisioning, or a
    promoted canary or shadow). Returns False when it could not go live from where it is.

    "Live" means served: the route is published from inside the transaction (as it leaves
    the database) and every live gateway must have loaded it before the transaction commits
    and anyone can read `live`; the publishers' turn is held until then, so no other publish
    can put the old route back in between. If the gateways do not all confirm within
    SWITCH_WAIT_SECONDS, it goes live anyway and route_switched keeps the old instances
    until they have."""
    turn = publish.Turn()
    try:
        return _switch_in_turn(deployment, turn)
    except BaseException:
        turn.release()  # nothing of the switch is committed
        raise


SWITCH_WAIT_SECONDS = 5.0


def _switch_in_turn(deployment: Deployment, turn: publish.Turn) -> bool:
    with transaction.atomic():
        # The turn ends when the switch is committed (by an outer transaction, if any): first
        # of what runs then, so publishes the switch itself queued wait for no one.
        transaction.on_commit(turn.release)
        # The new one first: if it cannot go live (another worker got there, or failed it),
        # nothing else changes and the old version keeps serving.
        if not states.transition(deployment, Status.LIVE, message=f"{deployment.version.version} is live."):
            return False
        previous = list(
            Deployment.objects.select_for_update()
            .filter(
                service=deployment.service,
                environment=deployment.environment,
                major=deployment.major,
                status=Status.LIVE,
            )
            .exclude(pk=deployment.pk)
        )
        for old in previous:
            rolled_back = deployment.rollback_of_id == old.pk
            states.transition(
                old,
                Status.ROLLED_BACK if rolled_back else Status.SUPERSEDED,
                message=f"{'Rolled back' if rolled_back else 'Superseded'} by #{deployment.pk} "
                f"({deployment.version.version}); draining.",
            )
        generation = turn.write(publish.KEY_ROUTES)
        if generation is not None:
            seen, alive = _await_gateways(generation, timeout=SWITCH_WAIT_SECONDS)
            if seen >= alive:
                _switched(deployment, seen, alive)
        audit_event_record(
            actor=None,
            actor_username="(worker)",
            action=AuditAction.DEPLOYMENT_LIVE,
            target=deployment,
            team=deployment.service.team,
            data={"version": deployment.version.version},
        )
    return True


def route_switched(deployment: Deployment) -> bool:
    """Publish the routes and wait until every live gateway has them (idempotent).

    Old instances are drained only after this answers True: until the gateways have the
    new route, they still send requests to the old instances.
    """
    if deployment.events.filter(step="switch").exists():
        return True
    generation = publish.publish(publish.KEY_ROUTES)
    if generation is None:
        states.event(
            deployment,
            "Could not publish the route to Redis yet; the old version keeps serving until it is published.",
            level="warn",
        )
        return False
    seen, alive = _await_gateways(generation)
    if seen < alive:
        states.event(
            deployment,
            f"Only {seen} of {alive} gateways loaded the new route; the old version keeps serving until they all do.",
            level="warn",
        )
        return False
    _switched(deployment, seen, alive)
    return True


def _switched(deployment: Deployment, seen: int, alive: int) -> None:
    states.event(
        deployment,
        f"Route {deployment.route_key} now points to {deployment.version.version} (gateways updated: {seen}/{alive}).",
        step="switch",
    )


def _await_gateways(generation: int, timeout: float = 10.0) -> tuple[int, int]:
    return publish.await_gateways(generation, timeout=timeout)


def retire_superseded(deployment: Deployment) -> None:
    """Drain and stop the instances of deployments this one replaced (idempotent)."""
    ended = (
        Instance.objects.filter(
            deployment__service=deployment.service,
            deployment__environment=deployment.environment,
            deployment__major=deployment.major,
            deployment__status__in=states.ENDED,
        )
        .exclude(state=InstanceState.STOPPED)
        .select_related("deployment")
    )
    for instance in ended:
        with contextlib.suppress(BackendUnavailable):
            _stop(get_backend(instance.backend), instance, instance.deployment, "after draining its requests")


def _fail(deployment: Deployment, backend: RuntimeBackend | None, reason: str, owner: str = "") -> None:
    log.warning("deployment %s failed: %s", deployment.pk, reason)
    if owner and not Deployment.objects.filter(pk=deployment.pk, lease_owner=owner).exists():
        return  # another worker holds it now: its outcome stands
    # The status first: only a deployment that really failed has its instances stopped.
    if not states.transition(
        deployment,
        Status.FAILED,
        message=f"Failed: {reason} The previous version keeps serving.",
        failure_reason=reason,
    ):
        return
    if backend is not None:
        for instance in deployment.instances.exclude(state=InstanceState.STOPPED):
            backend.stop(instance.name, drain_seconds=1)
            Instance.objects.filter(pk=instance.pk).update(state=InstanceState.FAILED, stopped_at=timezone.now())
    audit_event_record(
        actor=None,
        actor_username="(worker)",
        action=AuditAction.DEPLOYMENT_FAILED,
        target=deployment,
        team=deployment.service.team,
        data={"reason": reason[:500]},
    )


# ---------------------------------------------------------------- scaling and supervision


def scale(deployment_id: int, *, owner: str) -> str:
    """Match a live deployment's instances to its replicas without downtime."""
    if not claim(deployment_id, owner):
        return "busy"
    try:
        deployment = Deployment.objects.select_related("service", "environment", "version__artifact").get(
            pk=deployment_id
        )
        if deployment.status != Status.LIVE:
            return deployment.status
        backend = get_backend(deployment.environment.runtime)
        wanted = {instance_name(deployment, r) for r in range(deployment.replicas)}
        # The missing ones are all started first and then waited for: scaling 1 → 4 takes one
        # instance's start-up, not four in a row.
        starting: list[Instance] = []
        for replica in range(deployment.replicas):
            name = instance_name(deployment, replica)
            existing = Instance.objects.filter(name=name, state=InstanceState.READY).first()
            if existing and backend.status(name).running:
                continue
            try:
                starting.append(_start(deployment, backend, replica, owner))
            except RolloutFailed as exc:
                _not_added(deployment, backend, name, exc)
        for instance in starting:
            try:
                _wait_ready(deployment, backend, instance, owner)
                _smoke_test(deployment, instance)
            except RolloutFailed as exc:
                _not_added(deployment, backend, instance.name, exc)
                continue
            Instance.objects.filter(pk=instance.pk).update(state=InstanceState.READY)
        surplus = list(deployment.instances.exclude(name__in=wanted).exclude(state=InstanceState.STOPPED))
        # Out of the route first (draining instances are not published), then stopped.
        Instance.objects.filter(pk__in=[i.pk for i in surplus]).update(state=InstanceState.DRAINING)
        generation = publish.publish(publish.KEY_ROUTES)
        if generation:
            _await_gateways(generation)
        for instance in surplus:
            _stop(backend, instance, deployment, "(scaled down)")
            renew(deployment.pk, owner)
        if surplus:
            publish.publish(publish.KEY_ROUTES)
        return deployment.status
    finally:
        release(deployment_id, owner)


def _not_added(deployment: Deployment, backend: RuntimeBackend, name: str, exc: Exception) -> None:
    backend.stop(name, drain_seconds=1)
    Instance.objects.filter(name=name).update(state=InstanceState.FAILED)
    states.event(deployment, f"Could not add {name}: {exc}", level="error")


def rescale(deployment_id: int, replicas: int, *, owner: str, message: str) -> str:
    """The autoscaler's decision carried out: set an autoscaled live deployment's replicas and
    match its instances, under the deployment's lease (a rollout holding it wins: "busy", and
    the autoscaler decides again on its next look)."""
    if not claim(deployment_id, owner):
        return "busy"
    try:
        updated = Deployment.objects.filter(
            pk=deployment_id, status=Status.LIVE, target_in_flight__isnull=False
        ).update(replicas=replicas)
        if not updated:
            return "not autoscaled"
        states.event(Deployment(pk=deployment_id), message)
        return scale(deployment_id, owner=owner)
    finally:
        release(deployment_id, owner)


def supervise() -> list[str]:
    """Restart crashed instances of live deployments; stop instances nothing owns.

    Returns what it did, for logs and tests.
    """
    actions: list[str] = []
    changed = False
    # Live deployments and candidates being tried beside them (their instances get traffic too).
    live = Instance.objects.filter(deployment__status__in=states.SERVING).exclude(
        state__in=[InstanceState.STOPPED, InstanceState.FAILED, InstanceState.DRAINING]
    )
    backends: dict[str, RuntimeBackend] = {}  # one engine client per pass, not one per instance
    for instance in live.select_related(
        "deployment__service", "deployment__environment", "deployment__version__artifact"
    ):
        deployment = instance.deployment
        try:
            if instance.backend not in backends:
                backends[instance.backend] = get_backend(instance.backend)
            backend = backends[instance.backend]
            status = backend.status(instance.name)
            if not status.running:
                if instance.restarts >= MAX_RESTARTS:
                    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.FAILED)
                    states.event(
                        deployment,
                        f"Instance {instance.name} keeps stopping; gave up after "
                        f"{MAX_RESTARTS} restarts. Its log says why.",
                        level="error",
                    )
                    actions.append(f"gave up on {instance.name}")
                    changed = True
                    continue
                Instance.objects.filter(pk=instance.pk).update(
                    state=InstanceState.STARTING, restarts=instance.restarts + 1
                )
                started = backend.start(_spec(deployment, instance.name))
                Instance.objects.filter(pk=instance.pk).update(url=started.url)
                states.event(
                    deployment,
                    f"Instance {instance.name} stopped unexpectedly; restarted it at {started.url} "
                    f"(restart {instance.restarts + 1}).",
                    level="warn",
                )
                actions.append(f"restarted {instance.name}")
                changed = True
            elif status.url and instance.url and status.url != instance.url:
                # It runs elsewhere now (a swarm moved it off a node that died): route there.
                Instance.objects.filter(pk=instance.pk).update(url=status.url)
                states.event(deployment, f"Instance {instance.name} moved to {status.url}.", level="warn")
                actions.append(f"moved {instance.name}")
                changed = True
            elif instance.state == InstanceState.STARTING and _get(status.url, "/health/ready") == 200:
                Instance.objects.filter(pk=instance.pk).update(state=InstanceState.READY, url=status.url)
                states.event(deployment, f"Instance {instance.name} is ready again.")
                actions.append(f"ready {instance.name}")
                changed = True
        except BackendUnavailable:
            continue
        except Exception:
            log.exception("supervising %s failed", instance.name)
    # Instances of deployments that ended a while ago and still run (a worker died while
    # draining). The wait gives the periodic republish time to take them out of the routes.
    leftovers = Instance.objects.filter(
        deployment__status__in=states.ENDED, deployment__ended_at__lt=timezone.now() - timedelta(seconds=90)
    ).exclude(state__in=[InstanceState.STOPPED, InstanceState.FAILED])
    for instance in leftovers.select_related("deployment"):
        with contextlib.suppress(BackendUnavailable):
            _stop(get_backend(instance.backend), instance, instance.deployment, "(its deployment has ended)")
            actions.append(f"stopped {instance.name}")
    # Processes and containers no instance row owns at all.
    known = set(
        Instance.objects.exclude(state__in=[InstanceState.STOPPED, InstanceState.FAILED]).values_list("name", flat=True)
    )
    for backend_name in ("local", "docker", "swarm"):
        try:
            backend = get_backend(backend_name)
        except BackendUnavailable:
            continue
        for name in backend.list():
            if name in known:
                continue
            created = backend.created_at(name)
            if created is not None and time.time() - created < settings.DOCKER_ORPHAN_GRACE_SECONDS:
                continue  # maybe a rollout that is about to record it: give it time
            backend.stop(name, drain_seconds=1)
            orphan = Instance.objects.filter(name=name).select_related("deployment").first()
            if orphan is not None:
                states.event(orphan.deployment, f"Removed {name}, which no live deployment owns.", level="warn")
            audit_event_record(
                actor=None,
                actor_username="(reconciler)",
                action=AuditAction.RUNTIME_ORPHAN_REMOVE,
                data={"instance": name, "backend": backend_name},
            )
            actions.append(f"removed orphan {name}")
    if changed:
        publish.publish(publish.KEY_ROUTES)
    return actions


def stale_rollouts() -> list[int]:
    """Approved or provisioning deployments whose worker died (no lease, or an expired one)."""
    now = timezone.now()
    grace = now - timedelta(seconds=5)
    return list(
        Deployment.objects.filter(status__in=[Status.APPROVED, Status.PROVISIONING], updated_at__lt=grace)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .values_list("pk", flat=True)
    )
