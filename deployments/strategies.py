"""Canary and shadow: a candidate tried beside the live version, judged against it, then
promoted (the blue/green switch) or rolled back.

The rollout (deployments/rollout.py) provisions the candidate as it would for blue/green
(instances, readiness, smoke test); `begin` then moves it to `canary` or `shadow` instead of
switching, and the route is published with the candidate beside the stable version
(contract.Candidate). From then on `advance`, run every CANARY_TICK_SECONDS by the beat task
deployments.advance_candidates under the deployment's lease (so two workers never drive one
candidate), looks at the current step:

- paused: nothing happens;
- the gateway's counts of both versions since the step started (a baseline is taken when it
  starts, so a step is judged on its own requests) are compared as soon as the candidate has
  answered the environment's minimum of requests: a regression (error rate, p95, shadow
  agreement) rolls it back at once, with the numbers in the reason;
- so is a canary whose live quality from ground truth (outcomes sent for its logged
  predictions, read through the hook the monitoring app registers) is worse than stable's over
  the step, once both have the environment's minimum of labelled predictions;
- a canary step that passed and has baked for `bake_seconds` moves to the next percent; the
  step before 100 % promotes it; too few requests by the end of the bake say so and wait;
- a shadow is never promoted by itself: once it has passed, a person promotes or aborts it.

A rolled-back candidate's route is republished without it, every gateway is waited for, and
then its instances stop (`withdraw`). A promoted one goes through rollout._switch, and its
rollout task drains and stops the old version as in blue/green.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditAction
from accounts.services import audit_event_record
from deployments import publish, selectors, states
from deployments import rollout as engine
from deployments.models import Deployment, Environment, Instance, InstanceState, Status, Strategy
from deployments.runtime import BackendUnavailable, get_backend
from gateway import contract

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- what one version did in a window


@dataclass
class Side:
    """What one side of the comparison did in a window: requests answered, server errors and
    the latency histogram (for a shadow candidate: the copies it was sent)."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = ()
    agree: int = 0
    disagree: int = 0
    dropped: int = 0
    labelled: int = 0  # predictions in the window with an outcome sent for them
    quality: float | None = None  # the live metric on those (accuracy, RMSE: Verdict.quality_metric)
    quality_error: float = 0.0  # its standard error

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float | None:
        return selectors.UsageMinute(minute=0, buckets=list(self.buckets)).percentile(q)

    @property
    def agreement(self) -> float | None:
        compared = self.agree + self.disagree
        return self.agree / compared if compared else None

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": self.percentile(0.5),
            "p95_ms": self.percentile(0.95),
            "agreement": None if self.agreement is None else round(self.agreement, 4),
            "agree": self.agree,
            "disagree": self.disagree,
            "dropped": self.dropped,
            "labelled": self.labelled,
            "quality": None if self.quality is None else round(self.quality, 4),
            "quality_error": round(self.quality_error, 5),
        }


def _side(counts: dict[str, int], *, shadow: bool) -> Side:
    size = len(contract.BUCKETS_MS) + 1
    if shadow:
        return Side(
            requests=counts.get(contract.SHADOW_REQUESTS, 0),
            errors=counts.get(contract.SHADOW_ERRORS, 0),
            buckets=tuple(counts.get(f"{contract.SHADOW_BUCKET}{i}", 0) for i in range(size)),
            agree=counts.get(contract.SHADOW_AGREE, 0),
            disagree=counts.get(contract.SHADOW_DISAGREE, 0),
            dropped=counts.get(contract.SHADOW_DROPPED, 0),
        )
    return Side(
        requests=counts.get(contract.REQUESTS, 0),
        errors=counts.get(contract.SERVER_ERRORS, 0),
        buckets=tuple(counts.get(f"{contract.BUCKET}{i}", 0) for i in range(size)),
    )


def _minus(now: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {
        version: {kind: max(0, n - before.get(version, {}).get(kind, 0)) for kind, n in kinds.items()}
        for version, kinds in now.items()
    }


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}".removesuffix(".0") + " %"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


# ---------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Quality:
    """One version's live quality from ground truth in a window: how many of its logged
    predictions have an outcome, and the metrics measured on them (accuracy, rmse, ...)."""

    labelled: int
    metrics: dict[str, float] = field(default_factory=dict)
    standard_errors: dict[str, float] = field(default_factory=dict)  # of some metrics: how far off by chance


class QualityReader(Protocol):
    def __call__(
        self, *, service: str, environment: str, tasks: dict[str, str], since: float, until: float
    ) -> dict[str, Quality]: ...


# The monitoring app keeps the prediction log and the outcomes sent for it, and registers its
# reader here when it starts (MonitoringConfig.ready): deployments may not import it (DESIGN,
# "Layout"). Without a reader, candidates are judged without ground truth.
_quality_reader: QualityReader | None = None

# What is compared per task: one live metric, and whether more of it is better.
QUALITY_METRIC = {"classification": "accuracy", "regression": "rmse"}
HIGHER_IS_BETTER = {"accuracy": True, "rmse": False}
# A candidate's metric beyond the limit counts only when it is beyond it by this many standard
# errors (one-sided 99 %): a step is looked at every few seconds, and a candidate as good as
# stable would otherwise be rolled back by the luck of a few dozen outcomes.
QUALITY_Z = 2.33

# Reading ground truth scans the step's prediction log, so a candidate's reading is kept for
# QUALITY_READ_COST times as long as it took (at least QUALITY_READ_SECONDS): the worker spends
# at most 1/20 of its time on it, and a cheap read is fresh at every look. Read afresh before a
# step passes.
QUALITY_READ_SECONDS = 1.0
QUALITY_READ_COST = 20


def quality_reader_register(reader: QualityReader | None) -> None:
    """Set (or, with None, remove) where candidates' live quality is read from."""
    global _quality_reader  # one reader, set once as the apps start
    _quality_reader = reader


# ---------------------------------------------------------------- the route's stable version


def stable_of(deployment: Deployment) -> Deployment | None:
    """The live deployment of the candidate's route: what it is compared with."""
    return (
        Deployment.objects.filter(
            service_id=deployment.service_id,
            environment_id=deployment.environment_id,
            major=deployment.major,
            status=Status.LIVE,
        )
        .exclude(pk=deployment.pk)
        .select_related("version")
        .order_by("-live_at")
        .first()
    )


def _baseline(deployment: Deployment, stable: Deployment) -> dict:
    """The counts of both versions from the current minute on, as the window's zero."""
    since = time.time()
    versions = [deployment.version.version, stable.version.version]
    try:
        counts = selectors.version_counts(deployment=deployment, versions=versions, since=since)
    except Exception as exc:  # noqa: BLE001 - a step without a baseline counts its whole first minute
        log.warning("could not read the gateway's counts for deployment %s: %s", deployment.pk, exc)
        counts = {}
    return {"since": since, "counts": counts}


def share_text(deployment: Deployment, stable_version: str = "") -> str:
    percent = f"{deployment.percent:g} %"
    if deployment.status == Status.SHADOW or deployment.strategy == Strategy.SHADOW:
        stable = stable_version or "stable"
        return f"{percent} of requests copied to {deployment.version.version} (callers get {stable}'s answers)"
    rest = f"{100 - deployment.percent:g} %"
    return f"{percent} of requests to {deployment.version.version}, {rest} on {stable_version or 'stable'}"


# ---------------------------------------------------------------- start


def begin(deployment: Deployment) -> bool:
    """Called by the rollout once the candidate's instances are ready and smoke-tested: move it
    to `canary` or `shadow` at its first share. False when there is no live version to try it
    beside (the rollout then switches, as for blue/green)."""
    stable = stable_of(deployment)
    if stable is None:
        states.event(
            deployment,
            f"No version of {deployment.route_key} is live to compare a {deployment.get_strategy_display().lower()} "
            "with any more: switching as blue/green.",
            level="warn",
            step="begin:no-stable",
        )
        return False
    target = Status.SHADOW if deployment.strategy == Strategy.SHADOW else Status.CANARY
    deployment.status = target  # for share_text
    deployment.step_index = 0
    if target == Status.CANARY:
        message = (
            f"Canary: step 1 of {len(deployment.steps)}, {share_text(deployment, stable.version.version)}; "
            f"each step bakes {deployment.bake_seconds} s."
        )
    else:
        message = f"Shadow test: {share_text(deployment, stable.version.version)}."
    deployment.status = Status.PROVISIONING
    return states.transition(
        deployment,
        target,
        message=message,
        step_index=0,
        step_started_at=timezone.now(),
        step_baseline=_baseline(deployment, stable),
        paused=False,
        analysis={},
    )


def announce(deployment: Deployment) -> bool:
    """Publish the route with the candidate at its current share and wait until every live
    gateway has it (once per step). False while not every gateway has it yet."""
    step = f"share:{deployment.status}:{deployment.step_index}"
    if deployment.events.filter(step=step).exists():
        return True
    generation = publish.publish(publish.KEY_ROUTES)
    if generation is None:
        return False
    seen, alive = engine._await_gateways(generation)
    if seen < alive:
        return False
    states.event(deployment, f"Gateways updated ({seen}/{alive}): {share_text(deployment)}.", step=step)
    return True


# ---------------------------------------------------------------- judging


@dataclass
class Verdict:
    candidate: Side
    stable: Side
    regression: str = ""  # why the candidate is worse, with the numbers; empty when it is not
    judged: bool = False  # enough requests to judge
    quality_metric: str = ""  # the live metric compared from ground truth; empty: none for this task
    quality_at: float = 0.0  # when it was read
    quality_took: float = 0.0  # how long reading it took, in seconds

    def as_dict(self, deployment: Deployment, stable_version: str) -> dict:
        return {
            "at": time.time(),
            "step": deployment.step_index,
            "candidate": {"version": deployment.version.version, **self.candidate.as_dict()},
            "stable": {"version": stable_version, **self.stable.as_dict()},
            "judged": self.judged,
            "regression": self.regression,
            "min_requests": deployment.environment.canary_min_requests,
            "quality_metric": self.quality_metric,
            "quality_at": self.quality_at,
            "quality_took": round(self.quality_took, 4),
            "min_outcomes": deployment.environment.canary_min_outcomes,
            "verdict": self.text(deployment),
        }

    def text(self, deployment: Deployment) -> str:
        """The verdict as the deployment page says it."""
        environment, version = deployment.environment, deployment.version.version
        if self.regression:
            return f"Regression: {self.regression}."
        if not self.judged:
            what = "copies" if deployment.status == Status.SHADOW else "requests"
            return (
                f"Waiting for {environment.canary_min_requests} {what} to {version} before judging, "
                f"{self.candidate.requests} so far."
            )
        text = "Within the thresholds so far."
        need = environment.canary_min_outcomes
        c, s = self.candidate.labelled, self.stable.labelled
        if self.quality_metric and (c < need or s < need):
            text += (
                f" Live {selectors.metric_label(self.quality_metric)} is compared once each version has "
                f"{need} predictions with outcomes ({c} and {s} so far)."
            )
        return text


def judge(deployment: Deployment, stable: Deployment, *, fresh: bool = False) -> Verdict:
    """Compare the candidate with the stable version over the current step's window (ground
    truth read afresh with `fresh`, otherwise when the last reading is older than its cost allows)."""
    environment = deployment.environment
    shadow = deployment.status == Status.SHADOW
    baseline = deployment.step_baseline or {}
    since = float(baseline.get("since") or (deployment.step_started_at or timezone.now()).timestamp())
    versions = [deployment.version.version, stable.version.version]
    counts = _minus(
        selectors.version_counts(deployment=deployment, versions=versions, since=since), baseline.get("counts", {})
    )
    candidate = _side(counts.get(deployment.version.version, {}), shadow=shadow)
    ours = _side(counts.get(stable.version.version, {}), shadow=False)
    verdict = Verdict(candidate=candidate, stable=ours)
    if not shadow:  # a shadow's copies are never logged, so they have no outcomes
        _read_quality(deployment, stable, verdict, since=since, fresh=fresh)
    n = candidate.requests
    if n < environment.canary_min_requests:
        return verdict
    verdict.judged = True
    what = "copies" if shadow else "requests"
    limit = environment.canary_max_error_rate_increase
    if candidate.error_rate - ours.error_rate > limit + 1e-12:
        verdict.regression = (
            f"error rate {_pct(candidate.error_rate)} vs {_pct(ours.error_rate)} on stable "
            f"(limit +{limit * 100:g} points) over {n} {what}"
        )
        return verdict
    c95, s95 = candidate.percentile(0.95), ours.percentile(0.95)
    if (
        c95 is not None
        and s95 is not None
        and c95 > s95 * environment.canary_max_p95_ratio
        and c95 - s95 > environment.canary_min_p95_increase_ms
    ):
        verdict.regression = (
            f"p95 latency {_ms(c95)} vs {_ms(s95)} on stable (limit x{environment.canary_max_p95_ratio:g} "
            f"and +{environment.canary_min_p95_increase_ms} ms) over {n} {what}"
        )
        return verdict
    agreement = candidate.agreement
    if shadow and agreement is not None and agreement < environment.shadow_min_agreement:
        verdict.regression = (
            f"predictions agree with stable on {_pct(agreement)} of copies (at least "
            f"{_pct(environment.shadow_min_agreement)}) over {candidate.agree + candidate.disagree} compared copies"
        )
        return verdict
    verdict.regression = _quality_regression(environment, verdict)
    return verdict


def _read_quality(deployment: Deployment, stable: Deployment, verdict: Verdict, *, since: float, fresh: bool) -> None:
    """Each side's live quality over the step from the outcomes sent for its predictions, when
    both versions do the same task and it has a metric to compare."""
    task = deployment.version.task
    metric = QUALITY_METRIC.get(task)
    if _quality_reader is None or metric is None or stable.version.task != task:
        return
    verdict.quality_metric = metric
    sides = (
        (verdict.candidate, "candidate", deployment.version.version),
        (verdict.stable, "stable", stable.version.version),
    )
    now = time.time()
    previous = deployment.analysis or {}
    read_at, took = float(previous.get("quality_at") or 0), float(previous.get("quality_took") or 0)
    if (
        not fresh
        and previous.get("step") == deployment.step_index
        and previous.get("quality_metric") == metric
        and read_at >= since
        and now - read_at < max(QUALITY_READ_SECONDS, QUALITY_READ_COST * took)
    ):
        for side, name, _ in sides:
            side.labelled = previous.get(name, {}).get("labelled", 0)
            side.quality = previous.get(name, {}).get("quality")
            side.quality_error = previous.get(name, {}).get("quality_error", 0.0)
        verdict.quality_at, verdict.quality_took = read_at, took
        return
    started = time.monotonic()
    try:
        read = _quality_reader(
            service=deployment.service.name,
            environment=deployment.environment.name,
            tasks={version: task for _, _, version in sides},
            since=since,
            until=now,
        )
    except Exception as exc:  # noqa: BLE001 - judged without ground truth this time, read again next
        log.warning("could not read the live quality of deployment %s: %s", deployment.pk, exc)
        return
    verdict.quality_at, verdict.quality_took = now, time.monotonic() - started
    for side, _, version in sides:
        found = read.get(version)
        if found is not None:
            side.labelled, side.quality = found.labelled, found.metrics.get(metric)
            side.quality_error = found.standard_errors.get(metric, 0.0)


def _quality_regression(environment: Environment, verdict: Verdict) -> str:
    """Why the candidate's live quality is worse than stable's beyond the environment's limit;
    empty when it is not, or either side has too few outcomes to say."""
    metric = verdict.quality_metric
    c, s = verdict.candidate, verdict.stable
    need = environment.canary_min_outcomes
    if not metric or c.quality is None or s.quality is None or c.labelled < need or s.labelled < need:
        return ""
    drop = environment.canary_max_quality_drop
    higher = HIGHER_IS_BETTER[metric]
    factor = 1 - drop if higher else 1 + drop
    # The standard error of the difference between the candidate's metric and the limit.
    margin = QUALITY_Z * math.sqrt(c.quality_error**2 + (factor * s.quality_error) ** 2) + 1e-12
    beyond = s.quality * factor - c.quality if higher else c.quality - s.quality * factor
    if beyond <= margin:
        return ""
    return (
        f"live {_quality_text(metric, c.quality)} vs {_quality_text(metric, s.quality, named=False)} on stable "
        f"from ground truth (limit x{factor:g} of stable's) over {c.labelled} and {s.labelled} predictions "
        "with outcomes"
    )


def _quality_text(metric: str, value: float | None, *, named: bool = True) -> str:
    shown = selectors.quality_value(metric, value)
    return f"{selectors.metric_label(metric)} {shown}" if named else shown


def _summary(verdict: Verdict) -> str:
    c, s = verdict.candidate, verdict.stable
    text = (
        f"error rate {_pct(c.error_rate)} vs {_pct(s.error_rate)}, p95 {_ms(c.percentile(0.95))} vs "
        f"{_ms(s.percentile(0.95))} over {c.requests} requests"
    )
    if c.agreement is not None:
        text += f", agreement {_pct(c.agreement)}"
    metric = verdict.quality_metric
    if metric and c.quality is not None and s.quality is not None:
        text += (
            f", {_quality_text(metric, c.quality)} vs {_quality_text(metric, s.quality, named=False)}"
            f" from {c.labelled} and {s.labelled} outcomes"
        )
    elif metric:
        text += f", {metric} not compared ({c.labelled} outcomes for it so far)"
    return text


# ---------------------------------------------------------------- the loop


def advance(deployment_id: int, *, owner: str) -> str:
    """One look at a candidate, under its lease: judge, step, promote, roll back, or wait."""
    if not engine.claim(deployment_id, owner):
        return "busy"
    try:
        deployment = Deployment.objects.select_related("service", "environment", "version").get(pk=deployment_id)
        if deployment.status == Status.ROLLED_BACK:
            withdraw(deployment)
            return deployment.status
        if deployment.status == Status.LIVE:
            if engine.route_switched(deployment):
                engine.retire_superseded(deployment)
            return deployment.status
        if deployment.status not in states.TRYING_STATUSES:
            return deployment.status
        stable = stable_of(deployment)
        if stable is None:
            rollback(deployment, reason="the live version it was compared with is no longer live.")
            withdraw(deployment)
            return deployment.status
        if not announce(deployment):
            return "publishing"
        if deployment.paused:
            return "paused"
        baked = (timezone.now() - deployment.step_started_at).total_seconds() >= deployment.bake_seconds
        try:
            verdict = judge(deployment, stable, fresh=baked)
        except Exception as exc:  # noqa: BLE001 - Redis away: judge at the next look
            log.warning("could not judge deployment %s: %s", deployment_id, exc)
            return "no counts"
        Deployment.objects.filter(pk=deployment.pk, status=deployment.status, step_index=deployment.step_index).update(
            analysis=verdict.as_dict(deployment, stable.version.version)
        )
        if verdict.regression:
            rollback(deployment, reason=f"{verdict.regression}.")
            withdraw(deployment)
            return deployment.status
        if not baked:
            return deployment.status
        label = f"Step {deployment.step_index + 1} ({deployment.percent:g} %)"
        if not verdict.judged:
            states.event(
                deployment,
                f"{label} has baked {deployment.bake_seconds} s but is waiting for "
                f"{deployment.environment.canary_min_requests} requests to {deployment.version.version}, "
                f"{verdict.candidate.requests} so far.",
                step=f"waiting:{deployment.status}:{deployment.step_index}",
                level="warn",
            )
            return "waiting"
        if deployment.status == Status.SHADOW:
            states.event(
                deployment,
                f"The shadow test passed its checks ({_summary(verdict)}); it stays a shadow until someone "
                "promotes or aborts it.",
                step="shadow:passed",
            )
            return deployment.status
        return _next_step(deployment, stable, verdict)
    finally:
        engine.release(deployment_id, owner)


def _next_step(deployment: Deployment, stable: Deployment, verdict: Verdict) -> str:
    index = deployment.step_index
    current = deployment.percent
    following = float(deployment.steps[index + 1]) if index + 1 < len(deployment.steps) else 100.0
    if following >= 100:
        states.event(
            deployment,
            f"{current:g} % → 100 %: step {index + 1} passed ({_summary(verdict)}); promoting.",
            step=f"step:{index + 1}",
        )
        promote(deployment)
        return deployment.status
    updated = Deployment.objects.filter(pk=deployment.pk, status=Status.CANARY, step_index=index, paused=False).update(
        step_index=index + 1, step_started_at=timezone.now(), step_baseline=_baseline(deployment, stable)
    )
    if not updated:
        return "changed"  # paused, promoted or aborted meanwhile
    states.event(
        deployment,
        f"{current:g} % → {following:g} %: step {index + 1} passed ({_summary(verdict)}).",
        step=f"step:{index + 1}",
    )
    deployment.step_index = index + 1
    announce(deployment)
    return deployment.status


# ---------------------------------------------------------------- endings


def promote(deployment: Deployment, *, actor=None) -> bool:
    """The blue/green switch from a canary or shadow: the candidate goes live, the old version
    is superseded (and drained and stopped once every gateway routes to the candidate)."""
    with transaction.atomic():
        if not engine._switch(deployment):
            return False
        audit_event_record(
            actor=actor,
            actor_username=None if actor else "(worker)",
            action=AuditAction.DEPLOYMENT_PROMOTE,
            target=deployment,
            team=deployment.service.team,
            data={"version": deployment.version.version, "by": actor.username if actor else "analysis"},
        )
    if actor is None and engine.route_switched(deployment):
        engine.retire_superseded(deployment)
    return True


def rollback(deployment: Deployment, *, reason: str, actor=None) -> bool:
    """Send the candidate back to 0 % (status rolled_back, through the state machine so the
    notifications go out); `withdraw` then republishes the route and stops its instances."""
    stable = stable_of(deployment)
    serving = f" {stable.version.version} keeps serving." if stable else ""
    who = f"Aborted by {actor.username}" if actor else "Rolled back automatically"
    with transaction.atomic():
        if not states.transition(
            deployment,
            Status.ROLLED_BACK,
            message=f"{who}: {reason}{serving}",
            actor=actor,
            failure_reason=f"{who}: {reason}",
            paused=False,
        ):
            return False
        audit_event_record(
            actor=actor,
            actor_username=None if actor else "(worker)",
            action=AuditAction.DEPLOYMENT_ABORT if actor else AuditAction.DEPLOYMENT_AUTO_ROLLBACK,
            target=deployment,
            team=deployment.service.team,
            data={"version": deployment.version.version, "reason": reason[:500], "step": deployment.step_index},
        )
        publish.publish_on_commit(publish.KEY_ROUTES)
    return True


def withdraw(deployment: Deployment) -> bool:
    """A rolled-back candidate: the route without it at every gateway, then its instances stopped."""
    if deployment.events.filter(step="withdrawn").exists():
        return True
    generation = publish.publish(publish.KEY_ROUTES)
    if generation is None:
        return False
    seen, alive = engine._await_gateways(generation)
    if seen < alive:
        states.event(
            deployment,
            f"Only {seen} of {alive} gateways loaded the route without the candidate yet; its instances stop once "
            "they all have.",
            level="warn",
        )
        return False
    for instance in deployment.instances.exclude(state__in=[InstanceState.STOPPED, InstanceState.FAILED]):
        try:
            engine._stop(get_backend(instance.backend), instance, deployment, "(the candidate was rolled back)")
        except BackendUnavailable:
            return False
    states.event(
        deployment,
        f"Route {deployment.route_key} no longer sends anything to {deployment.version.version} "
        f"(gateways updated: {seen}/{alive}); its instances are stopped.",
        step="withdrawn",
    )
    return True


def pending() -> list[int]:
    """Candidates to look at: those being tried, and rolled-back ones whose instances still run."""
    trying = Deployment.objects.filter(status__in=states.TRYING_STATUSES).values_list("pk", flat=True)
    leftover = (
        Instance.objects.filter(deployment__status=Status.ROLLED_BACK)
        .exclude(deployment__strategy=Strategy.BLUE_GREEN)
        .exclude(state__in=[InstanceState.STOPPED, InstanceState.FAILED])
        .values_list("deployment_id", flat=True)
    )
    return sorted(set(trying) | set(leftover))
