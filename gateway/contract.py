"""The data-plane contract: what the control plane writes to Redis and the gateway reads.

One Django-free module that both sides import (deployments/publish.py and
deployments/selectors.py on the control plane; gateway/state.py, gateway/app.py and
gateway/metrics.py on the data plane), so each key name, payload field and format exists
once. Payloads are frozen dataclasses with `encode()` to the JSON kept in a Redis hash and
`decode()` from it; tests/gateway/test_contract.py round-trips each of them.

Snapshot: three hashes the control plane rewrites whole, each in one MULTI, and a generation
counter it bumps with every write. A gateway polls the counter and reloads the three hashes
(in one MULTI) when it moves.

    KEY_ROUTES   route key ("development/iris/v1") -> Route
    KEY_TOKENS   sha256 hex digest of an API token  -> Token
    KEY_GRANTS   service name                        -> Grant (with each caller's Allowance)
    KEY_GATEWAYS gateway id                          -> Heartbeat (written by gateways)

Metrics: gateways count requests per minute into one hash per minute (`minute_key`), whose
fields are a series (`series`) and a kind of count (`metric_field`).

Prediction log: gateways append logged predictions, in batches, to one Redis stream
(KEY_PREDICTIONS), each entry a `PredictionBatch`; a worker drains it into Parquet files. A
route says whether and how its predictions are logged (`Route.logging`).

Load: every gateway process writes, about once a second, the requests in flight per route into
one field (its id) of KEY_LOAD, a `Load`; the autoscaler (deployments/autoscale.py) sums the
fresh ones. A route with `scale_to_zero` may have no instances: the gateway then holds its
requests (counted as `held` in its load, which is what wakes the route) until one is published.

Canary and shadow: a route may carry a `Candidate`, a version tried beside its stable one.
A canary candidate serves a share of the route's requests (chosen per request, or per caller
when sticky: `sticky_bucket`); a shadow candidate gets a copy of a share of them after the
caller has had stable's answer. Shadow copies are counted under the SHADOW_* kinds, and
gateways keep the latest disagreeing examples in a list per candidate (`shadow_examples_key`).

Who may do what: the control plane writes everything under SNAPSHOT_PREFIX; gateways only
read there, and write only under GATEWAY_PREFIX (heartbeats, counts, the prediction log, the
rate limits' reconciliation, the daily usage per grant and the shadow examples). `gateway_acl_rules`
says so in Redis's ACL language, for the Redis user gateways connect as.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

SNAPSHOT_PREFIX = "portal:dp:"  # written by the control plane, read by gateways
GATEWAY_PREFIX = "portal:gw:"  # written by gateways, read by the control plane
KEY_ROUTES = SNAPSHOT_PREFIX + "routes"
KEY_TOKENS = SNAPSHOT_PREFIX + "tokens"
KEY_GRANTS = SNAPSHOT_PREFIX + "grants"
KEY_GENERATION = SNAPSHOT_PREFIX + "generation"
KEY_GATEWAYS = GATEWAY_PREFIX + "heartbeats"
KEY_LOAD = GATEWAY_PREFIX + "load"  # gateway id -> Load
KEY_PREDICTIONS = GATEWAY_PREFIX + "predictions"  # a stream of PredictionBatch entries
# At most this many batches wait in the stream (older ones are trimmed if no worker drains it).
PREDICTIONS_STREAM_MAX = 100_000
# Logged predictions gateways had to drop (buffer full, Redis unreachable), per route key.
KEY_PREDICTIONS_DROPPED = GATEWAY_PREFIX + "predictions:dropped"
SNAPSHOT_KEYS = (KEY_ROUTES, KEY_TOKENS, KEY_GRANTS)

# The Redis commands a gateway sends. (Its client's CLIENT SETINFO at connect may be refused:
# the client ignores that.)
GATEWAY_COMMANDS = (
    "get",
    "hgetall",
    "multi",
    "exec",
    "hset",
    "hdel",
    "hincrby",
    "expire",
    "ping",
    "select",
    "xadd",
    "lpush",  # a shadow's disagreeing examples (shadow_examples_key)
    "ltrim",
)


def gateway_acl_rules(*, key_permissions: bool = True) -> str:
    """The ACL rules of the Redis user gateways connect as (without its name and password):
    read the snapshot, write heartbeats, counts and rate-limit state, nothing else. Redis 7 grants read and
    write per key pattern (`%R~`, `%RW~`); Redis 6 grants keys and commands apart, so there
    a gateway's user could also write the snapshot's keys."""
    keys = (
        f"%R~{SNAPSHOT_PREFIX}* %RW~{GATEWAY_PREFIX}*" if key_permissions else f"~{SNAPSHOT_PREFIX}* ~{GATEWAY_PREFIX}*"
    )
    return f"resetkeys resetchannels {keys} -@all " + " ".join(f"+{command}" for command in GATEWAY_COMMANDS)


# Instances one prediction request may carry, unless the service says otherwise.
DEFAULT_MAX_INSTANCES = 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def route_key(environment: str, service: str, major: int | str) -> str:
    """Where a route is served: /serve/{route key}/predict. `major` as published (an int) or
    as it appears in a request's path (its digits)."""
    return f"{environment}/{service}/v{major}"


# ---------------------------------------------------------------- snapshot payloads


@dataclass(frozen=True)
class Deprecation:
    """A deprecated major: callers get Deprecation (RFC 9745) and Sunset (RFC 8594) headers."""

    since: float  # epoch seconds
    sunset: float | None = None  # epoch seconds
    note: str = ""


@dataclass(frozen=True)
class Logging:
    """How a route's predictions are logged: the share sampled, and whether the instances and
    predictions themselves are kept (otherwise only ids, times, sizes and outcomes)."""

    sample_rate: float = 1.0
    payloads: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "payloads": self.payloads}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Logging:
        return cls(sample_rate=min(1.0, max(0.0, float(data["sample_rate"]))), payloads=bool(data["payloads"]))


CANARY = "canary"
SHADOW = "shadow"
CANDIDATE_MODES = (CANARY, SHADOW)


@dataclass(frozen=True)
class Candidate:
    """A version being tried beside a route's stable one."""

    deployment: int
    version: str
    instances: tuple[str, ...]  # base URLs of its ready model servers
    # canary: share of requests routed to it (0-100); shadow: share of requests copied to it (0-100)
    percent: float
    mode: str = CANARY  # "canary" | "shadow"
    sticky: bool = False  # canary: one caller (a hash of its token digest) sees one version

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "version": self.version,
            "instances": list(self.instances),
            "percent": self.percent,
            "mode": self.mode,
            "sticky": self.sticky,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(
            deployment=int(data["deployment"]),
            version=data["version"],
            instances=tuple(data["instances"]),
            percent=min(100.0, max(0.0, float(data["percent"]))),
            mode=data.get("mode", CANARY),
            sticky=bool(data.get("sticky", False)),
        )


def sticky_bucket(token_digest: str, key: str) -> int:
    """Where a caller falls (0-9999) for a sticky canary of the route `key`: the candidate
    serves it when the bucket is under percent * 100, so a caller keeps its version across
    requests, and one that had the candidate at p % keeps it at any larger p."""
    digest = hashlib.sha256((token_digest + key).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10000


@dataclass(frozen=True)
class Route:
    """The live deployment of one major of a service in one environment.

    Its own fields are the stable version; `candidate`, when set, is a version being tried
    beside it (a canary share of the requests, or a shadow copy of them)."""

    deployment: int
    service: str
    environment: str
    major: int
    version: str
    instances: tuple[str, ...]  # base URLs of ready model servers
    input_schema: dict = field(default_factory=dict)
    output_schema: dict = field(default_factory=dict)
    deprecation: Deprecation | None = None
    max_instances: int = DEFAULT_MAX_INSTANCES
    logging: Logging | None = None  # None: predictions of this route are not logged
    # Autoscaled with a minimum of 0: no instances means "cold", not "down" (hold and wake).
    scale_to_zero: bool = False
    candidate: Candidate | None = None

    @property
    def key(self) -> str:
        return route_key(self.environment, self.service, self.major)

    def encode(self) -> str:
        # `scale_to_zero` and `candidate` only when set: every other route keeps the format it
        # always had.
        extra: dict[str, Any] = {"scale_to_zero": True} if self.scale_to_zero else {}
        if self.candidate is not None:
            extra["candidate"] = self.candidate.as_dict()
        return _dumps(
            {
                "deployment": self.deployment,
                "service": self.service,
                "environment": self.environment,
                "major": self.major,
                "version": self.version,
                "instances": list(self.instances),
                "input_schema": self.input_schema,
                "output_schema": self.output_schema,
                "deprecation": (
                    None
                    if self.deprecation is None
                    else {
                        "since": self.deprecation.since,
                        "sunset": self.deprecation.sunset,
                        "note": self.deprecation.note,
                    }
                ),
                "max_instances": self.max_instances,
                "logging": None if self.logging is None else self.logging.as_dict(),
                **extra,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Route:
        data = json.loads(raw)
        deprecation = data.get("deprecation")
        return cls(
            deployment=data["deployment"],
            service=data["service"],
            environment=data["environment"],
            major=data["major"],
            version=data["version"],
            instances=tuple(data["instances"]),
            input_schema=data["input_schema"],
            output_schema=data["output_schema"],
            deprecation=(
                None
                if not deprecation
                else Deprecation(
                    since=deprecation["since"], sunset=deprecation.get("sunset"), note=deprecation.get("note", "")
                )
            ),
            # Absent from what an older control plane wrote.
            max_instances=int(data.get("max_instances", DEFAULT_MAX_INSTANCES)),
            logging=Logging.from_dict(data["logging"]) if data.get("logging") else None,
            scale_to_zero=bool(data.get("scale_to_zero", False)),
            candidate=Candidate.from_dict(data["candidate"]) if data.get("candidate") else None,
        )


@dataclass(frozen=True)
class Token:
    """Who an API token with the invoke scope belongs to, and until when it is valid."""

    user: int
    username: str
    expires: float | None  # epoch seconds; None never expires

    def encode(self) -> str:
        return _dumps({"user": self.user, "username": self.username, "expires": self.expires})

    @classmethod
    def decode(cls, raw: bytes | str) -> Token:
        data = json.loads(raw)
        return cls(user=data["user"], username=data["username"], expires=data["expires"])


@dataclass(frozen=True)
class Allowance:
    """The grant a caller's requests count against, and its limits (None: no such limit).

    Limits are per grant: a team's grant is one allowance shared by all its members' calls."""

    grant: int  # the grant's id in the control plane
    rate_per_second: float | None = None
    burst: int | None = None  # requests at once above the rate; None: the rate's (at least 1)
    daily_quota: int | None = None  # requests per UTC day

    @property
    def limited(self) -> bool:
        return self.rate_per_second is not None or self.daily_quota is not None

    @property
    def capacity(self) -> float:
        """The token bucket's size: the burst, or else one second of the rate; never under 1."""
        if self.burst is not None:
            return float(max(1, self.burst))
        return max(1.0, float(self.rate_per_second or 0))


@dataclass(frozen=True)
class Grant:
    """The ids of the active users who may call a service (directly or through a team), and
    for each the allowance their requests count against. A user without one (everyone, in a
    snapshot written before grants had limits) is counted nowhere and never limited."""

    users: frozenset[int]
    allowances: dict[int, Allowance] = field(default_factory=dict)  # user id -> allowance

    def encode(self) -> str:
        if not self.allowances:
            return _dumps(sorted(self.users))  # the format from before grants had limits
        by_grant: dict[Allowance, list[int]] = {}
        for user, allowance in self.allowances.items():
            by_grant.setdefault(allowance, []).append(user)
        return _dumps(
            {
                "users": sorted(self.users),
                "grants": [
                    [a.grant, a.rate_per_second, a.burst, a.daily_quota, sorted(users)]
                    for a, users in sorted(by_grant.items(), key=lambda item: item[0].grant)
                ],
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Grant:
        data = json.loads(raw)
        if isinstance(data, list):  # written before grants had limits: nobody is limited
            return cls(users=frozenset(data))
        allowances = {}
        for grant, rate, burst, quota, users in data["grants"]:
            allowance = Allowance(
                grant=int(grant),
                rate_per_second=None if rate is None else float(rate),
                burst=None if burst is None else int(burst),
                daily_quota=None if quota is None else int(quota),
            )
            for user in users:
                allowances[int(user)] = allowance
        return cls(users=frozenset(data["users"]), allowances=allowances)


@dataclass(frozen=True)
class Heartbeat:
    """A gateway's note of the generation it has loaded, refreshed about once a second."""

    generation: int
    at: float  # epoch seconds

    def encode(self) -> str:
        return _dumps({"generation": self.generation, "at": self.at})

    @classmethod
    def decode(cls, raw: bytes | str) -> Heartbeat:
        data = json.loads(raw)
        return cls(generation=data.get("generation", 0), at=data.get("at", 0))


# ---------------------------------------------------------------- load, for the autoscaler

# The gateway samples each route's requests in flight this often, and reports the mean and
# the peak over the last LOAD_WINDOW_SECONDS with every report.
LOAD_SAMPLE_SECONDS = 0.25
LOAD_WINDOW_SECONDS = 3.0
LOAD_REPORT_SECONDS = 1.0
# A report older than this is a gateway that stopped (or lost Redis): not counted.
LOAD_FRESH_SECONDS = 5.0


@dataclass(frozen=True)
class RouteLoad:
    """One gateway's requests for one route: in flight now (sent to an instance, or held
    waiting for a cold route's first instance), and over the last LOAD_WINDOW_SECONDS."""

    in_flight: int
    average: float
    peak: int
    held: int = 0  # of in_flight, waiting for an instance of a route scaled to zero
    held_since: float | None = None  # epoch seconds the oldest held request arrived


@dataclass(frozen=True)
class Load:
    """What one gateway process reports; routes without requests in the window are left out."""

    at: float  # epoch seconds
    routes: dict[str, RouteLoad] = field(default_factory=dict)

    def encode(self) -> str:
        return _dumps(
            {
                "at": self.at,
                "routes": {
                    key: [r.in_flight, round(r.average, 3), r.peak, r.held, r.held_since]
                    for key, r in self.routes.items()
                },
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Load:
        data = json.loads(raw)
        return cls(
            at=float(data["at"]),
            routes={
                key: RouteLoad(int(v[0]), float(v[1]), int(v[2]), int(v[3]), None if v[4] is None else float(v[4]))
                for key, v in data["routes"].items()
            },
        )


# ---------------------------------------------------------------- metrics

METRICS_KEY_PREFIX = GATEWAY_PREFIX + "metrics:"
METRICS_RETENTION_SECONDS = 2 * 3600
# Upper bounds of the latency buckets, in milliseconds; the last bucket is everything above.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Kinds of count kept per series and minute; a latency bucket's kind is "b" and its index.
REQUESTS = "n"
SERVER_ERRORS = "e5"  # the service failed
CLIENT_ERRORS = "e4"  # the caller's request was refused
BUCKET = "b"
# Shadow copies, counted apart under the candidate's version (in the series of the caller
# whose request was copied): copies sent, copies that failed (no answer, or not a 2xx),
# answers whose predictions equal the stable answer's (`predictions_agree`) or not, and
# copies dropped without being sent because the gateway had its fill of them in flight.
# A shadow's latency goes to its own histogram: kind SHADOW_BUCKET and the bucket's index.
SHADOW_REQUESTS = "shadow_requests"
SHADOW_ERRORS = "shadow_errors"
SHADOW_AGREE = "shadow_agree"
SHADOW_DISAGREE = "shadow_disagree"
SHADOW_DROPPED = "shadow_dropped"
SHADOW_BUCKET = "sb"  # never starts with BUCKET: readers of the callers' histogram skip it
SHADOW_KINDS = (SHADOW_REQUESTS, SHADOW_ERRORS, SHADOW_AGREE, SHADOW_DISAGREE, SHADOW_DROPPED)

_SEP = "|"  # never in a name: environments, services and usernames exclude it


def minute_key(ts: float) -> str:
    """The hash that holds the counts of the minute `ts` falls in."""
    return f"{METRICS_KEY_PREFIX}{int(ts // 60) * 60}"


@dataclass(frozen=True)
class Series:
    """Whose requests a count is of: one version of a service, called by one consumer."""

    environment: str
    service: str
    major: int
    version: str
    consumer: str


def series(environment: str, service: str, major: int, version: str, consumer: str) -> str:
    """A series as the gateway names it in a field (built per request, so a plain string)."""
    return f"{environment}{_SEP}{service}{_SEP}{major}{_SEP}{version}{_SEP}{consumer}"


def metric_field(series_name: str, kind: str) -> str:
    return f"{series_name}{_SEP}{kind}"


def parse_metric_field(name: bytes | str) -> tuple[Series, str]:
    """A field of a minute's hash: the series and the kind of count."""
    text = name.decode() if isinstance(name, bytes) else name
    environment, service, major, version, consumer, kind = text.split(_SEP)
    return Series(environment, service, int(major), version, consumer), kind


# ---------------------------------------------------------------- rate limits and quotas
#
# Each gateway enforces a grant's rate with a token bucket of its own, and every
# LIMITS_SYNC_SECONDS reconciles all its buckets with the other gateways in one pipeline
# (gateway/limits.py):
#   - `rate_key` (service, grant): a hash of gateway id -> when it last had requests under
#     the grant; the gateways seen within LIMITS_ACTIVE_SECONDS share the rate and the burst
#     equally;
#   - `usage_key` (UTC day): a hash of `usage_field` -> requests admitted that day under a
#     grant, and of `usage_field(..., refused=True)` -> requests refused with 429. Gateways
#     add their counts and read the totals back (for the daily quota); the portal reads it for
#     the service page's usage per consumer.

LIMITS_SYNC_SECONDS = 0.2
LIMITS_ACTIVE_SECONDS = 1.5
USAGE_KEY_PREFIX = GATEWAY_PREFIX + "usage:"
USAGE_RETENTION_SECONDS = 8 * 86400
RATE_KEY_PREFIX = GATEWAY_PREFIX + "rate:"
RATE_RETENTION_SECONDS = 10
REFUSED = "429"


def utc_day(ts: float) -> str:
    """The UTC day `ts` falls in, as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def usage_key(day: str) -> str:
    return f"{USAGE_KEY_PREFIX}{day}"


def usage_field(service: str, grant: int, *, refused: bool = False) -> str:
    return f"{service}{_SEP}{grant}{_SEP}{REFUSED}" if refused else f"{service}{_SEP}{grant}"


def rate_key(service: str, grant: int) -> str:
    return f"{RATE_KEY_PREFIX}{service}{_SEP}{grant}"


# ---------------------------------------------------------------- the prediction log

# The fields of one logged prediction, in a PredictionBatch's `records`.
PREDICTION_FIELDS = (
    "id",  # the prediction id the caller got back
    "ts",  # epoch seconds
    "service",
    "environment",
    "major",
    "version",
    "deployment",
    "status",  # the HTTP status the caller got
    "latency_ms",
    "instances",  # how many instances the request carried
    "inputs",  # JSON of the instances, or None when payloads are not kept
    "outputs",  # JSON of the predictions, or None
)


@dataclass(frozen=True)
class PredictionBatch:
    """Logged predictions a gateway sends as one stream entry (one XADD for many records),
    each record a list in PREDICTION_FIELDS order."""

    records: list[list[Any]]

    def encode(self) -> bytes:
        return json.dumps(self.records, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PredictionBatch:
        records = json.loads(raw)
        if not isinstance(records, list) or not all(
            isinstance(r, list) and len(r) == len(PREDICTION_FIELDS) for r in records
        ):
            raise ValueError("not a batch of prediction records")
        return cls(records=records)


# ---------------------------------------------------------------- shadow comparisons

# The most recent disagreeing examples a gateway keeps per shadow candidate deployment (LPUSH,
# then LTRIM to this many), each a ShadowExample; its payloads cut to SHADOW_EXAMPLE_MAX_CHARS.
SHADOW_EXAMPLES_MAX = 20
SHADOW_EXAMPLE_MAX_CHARS = 4000
SHADOW_EXAMPLES_RETENTION_SECONDS = 7 * 86400


def shadow_examples_key(deployment: int) -> str:
    """The Redis list of a shadow candidate's recent disagreeing examples, newest first."""
    return f"{GATEWAY_PREFIX}shadow:examples:{deployment}"


def _truncated(value: Any) -> Any:
    """A payload as kept in an example: itself, or its JSON cut to SHADOW_EXAMPLE_MAX_CHARS."""
    text = _dumps(value)
    if len(text) <= SHADOW_EXAMPLE_MAX_CHARS:
        return value
    return text[:SHADOW_EXAMPLE_MAX_CHARS] + "…"


@dataclass(frozen=True)
class ShadowExample:
    """A request whose shadow copy the candidate answered differently: the instances, the
    predictions the caller got from stable, and the candidate's. A payload too large to keep
    is its JSON text cut short (a string ending with "…")."""

    ts: float  # epoch seconds
    instances: Any
    stable: Any
    candidate: Any

    def encode(self) -> str:
        return _dumps(
            {
                "ts": self.ts,
                "instances": _truncated(self.instances),
                "stable": _truncated(self.stable),
                "candidate": _truncated(self.candidate),
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> ShadowExample:
        data = json.loads(raw)
        return cls(
            ts=float(data["ts"]), instances=data["instances"], stable=data["stable"], candidate=data["candidate"]
        )


def predictions_agree(a: Any, b: Any) -> bool:
    """Whether two answers' predictions are the same: equal as JSON, numbers within 1e-6 of each
    other relatively (a float printed by another version of a library still agrees)."""
    if isinstance(a, bool) or isinstance(b, bool):  # JSON's true is not 1
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(predictions_agree(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(predictions_agree(a[k], b[k]) for k in a)
    return a == b
