"""Settings for the portal, read from environment variables only.

`PORTAL_ENV` selects the profile: `local` (the default: SQLite, a Redis that `make run`
starts, a secret key generated once under `var/`; DEBUG only where `make run` turns it on) or `production` (refuses to
start with DEBUG on, without SECRET_KEY or ALLOWED_HOSTS, and turns on HTTPS hardening).
The README lists every variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from accounts.ldap_settings import ldap_settings
from accounts.mapping import parse_group_list, parse_team_map
from portal.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))

PORTAL_ENV = env_str("PORTAL_ENV", "local")
if PORTAL_ENV not in {"local", "production"}:
    raise ImproperlyConfigured(f"PORTAL_ENV={PORTAL_ENV!r} is unknown; use 'local' or 'production'.")
PRODUCTION = PORTAL_ENV == "production"

# Off unless asked for: `make run` asks (DEBUG=1 for the processes it starts); a portal
# started any other way shows no tracebacks and no debug pages.
DEBUG = env_bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production: unset DEBUG or set DEBUG=0.")


def _local_secret_key() -> str:
    # A key generated once per checkout keeps sessions valid across restarts of `make run`
    # without ever committing a secret.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production needs a long random secret, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    SECRET_KEY = _local_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is not set: list the host names the portal answers to, comma-separated.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "csp",
    "core",
    "accounts",
    "registry",
    "deployments",
    "monitoring",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.ApiTrailingSlashMiddleware",
    "core.middleware.ApiBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "accounts.middleware.RequestOriginMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.sandbox_status",
            ],
        },
    },
]

# Database: SQLite under var/ by default; PostgreSQL (or anything Django supports) via DATABASE_URL.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server and the worker read while one of them writes; IMMEDIATE
    # transactions take the write lock up front instead of failing half-way with
    # "database is locked" when two processes write at once.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests run a real Celery worker in another process, so the test database must be a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-portal.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "accounts.backends.HumanModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# django-guardian: no anonymous user object; permissions live in direct-FK tables per model.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it; collectstatic fills it in production
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Locally, serve static files straight from the source folders (no collectstatic step).
WHITENOISE_USE_FINDERS = not PRODUCTION


# Redis: Celery's broker and result store; later the gateway's routes and grants.
def _redis_url_of_make_run() -> str:
    # `make run` starts a Redis with a password, on the port it was told, and leaves its URL
    # here for commands run beside it (manage.py create_token must publish where it runs).
    try:
        return (VAR_DIR / "redis-url").read_text().strip()
    except FileNotFoundError:
        return ""


REDIS_URL = env_str("REDIS_URL") or _redis_url_of_make_run() or "redis://127.0.0.1:6379/0"

# The default cache stays in each process; counts that must be shared (login throttles)
# go to Redis.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "shared": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "portal:cache",
    },
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 1800)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 1740)
# Log every task's "received" and "succeeded" (make run turns them off: see portal/celery.py).
WORKER_TASK_LOGS = env_bool("WORKER_TASK_LOGS", True)
# One message at a time per worker process: long deployments must not hold others hostage.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
# Periodic work; `make run` embeds the scheduler in its worker, larger setups run one
# `celery -A portal beat` next to any number of workers.
CELERY_BEAT_SCHEDULE = {
    "artifact-staging-cleanup": {"task": "registry.artifact_staging_cleanup", "schedule": 900.0},
    "deployments-reconcile": {"task": "deployments.reconcile", "schedule": 5.0},
    # Canary and shadow candidates: judged, stepped, promoted or rolled back (deployments/strategies.py).
    "deployments-advance-candidates": {
        "task": "deployments.advance_candidates",
        "schedule": float(env_int("CANARY_TICK_SECONDS", 2)),
        "options": {"expires": float(env_int("CANARY_TICK_SECONDS", 2)) * 2},
    },
    "dataplane-republish": {"task": "deployments.publish_dataplane", "schedule": 60.0},
    "predictions-drain": {"task": "monitoring.drain_predictions", "schedule": 2.0},
    "predictions-sweep": {"task": "monitoring.sweep_predictions", "schedule": 3600.0},
    "predictions-compact": {"task": "monitoring.compact_predictions", "schedule": 600.0},
    "drift-score": {"task": "monitoring.score_drift", "schedule": float(env_int("DRIFT_INTERVAL_SECONDS", 60))},
    "alerts-evaluate": {"task": "monitoring.evaluate_alerts", "schedule": float(env_int("ALERT_INTERVAL_SECONDS", 30))},
    "webhooks-resend": {"task": "monitoring.resend_webhooks", "schedule": 60.0},
    "tokens-expiring": {"task": "monitoring.notify_expiring_tokens", "schedule": 3600.0},
    "notifications-sweep": {"task": "monitoring.sweep_notifications", "schedule": 3600.0},
    "grants-expire": {
        "task": "deployments.expire_grants",
        "schedule": float(env_int("GRANT_EXPIRY_INTERVAL_SECONDS", 60)),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Bearer first, so a request without credentials gets 401 with WWW-Authenticate.
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.permissions.TokenScopePermission",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "core.rest.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.rest.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.PortalAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Password guessing through the token login is slowed per client address and per
    # username, counted in Redis so every web process shares the count. The address is the
    # connection's own unless NUM_PROXIES says how many trusted proxies append to
    # X-Forwarded-For (a client-supplied header must not pick its own address).
    "DEFAULT_THROTTLE_RATES": {
        "login": env_str("LOGIN_THROTTLE_RATE", "10/minute"),
        "login_user": env_str("LOGIN_USER_THROTTLE_RATE", "30/hour"),
    },
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Portal API",
    "DESCRIPTION": "Register models and versions, deploy them, and manage who may call them.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "accounts.models.Role",
        "TokenScopeEnum": "accounts.models.TokenScope",
        "DeploymentStatusEnum": "deployments.models.Status",
        "UploadStatusEnum": "registry.models.Upload.Status",
        "EventTypeEnum": "monitoring.models.EventType",
    },
    "COMPONENT_SPLIT_PATCH": False,  # PATCH bodies are validated whole (core.openapi.PortalAutoSchema)
    # Each operation's refusals (400/401/403/404/409/413/415/429 as it can give them), in
    # the API's one error shape: core/openapi.py.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.openapi.document_errors"],
}

# Model registry
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
ARTIFACT_MAX_BYTES = env_int("ARTIFACT_MAX_BYTES", 5 * 1024**3)
# Where artifacts live: `filesystem` (ARTIFACT_ROOT, one machine) or `s3` (one bucket shared by
# every machine; credentials from boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
# AWS_PROFILE, an instance role). With S3, files that must be local (the load check, `local`
# model servers) are fetched once into ARTIFACT_CACHE_DIR, and downloads stream through the
# portal unless ARTIFACT_S3_PRESIGNED_DOWNLOADS redirects them to a presigned URL.
ARTIFACT_STORE = env_str("ARTIFACT_STORE", "filesystem")
if ARTIFACT_STORE not in ("filesystem", "s3"):
    raise ImproperlyConfigured(f"ARTIFACT_STORE={ARTIFACT_STORE!r} is unknown; use 'filesystem' or 's3'.")
ARTIFACT_S3_BUCKET = env_str("ARTIFACT_S3_BUCKET")
if ARTIFACT_STORE == "s3" and not ARTIFACT_S3_BUCKET:
    raise ImproperlyConfigured("ARTIFACT_STORE=s3 needs ARTIFACT_S3_BUCKET: the bucket to keep the artifacts in.")
ARTIFACT_S3_ENDPOINT_URL = env_str("ARTIFACT_S3_ENDPOINT_URL")  # empty: AWS; else MinIO, Ceph, ...
ARTIFACT_S3_PREFIX = env_str("ARTIFACT_S3_PREFIX")
ARTIFACT_S3_REGION = env_str("ARTIFACT_S3_REGION")
ARTIFACT_S3_PRESIGNED_DOWNLOADS = env_bool("ARTIFACT_S3_PRESIGNED_DOWNLOADS", False)
ARTIFACT_S3_PRESIGNED_SECONDS = env_int("ARTIFACT_S3_PRESIGNED_SECONDS", 300)
ARTIFACT_CACHE_DIR = Path(env_str("ARTIFACT_CACHE_DIR", str(VAR_DIR / "artifact-cache")))
# How many bytes of registered artifacts one person may have in the store (each distinct
# file counted once, however many of their versions use it); 0 means no limit.
ARTIFACT_QUOTA_BYTES = env_int("ARTIFACT_QUOTA_BYTES", 100 * 1024**3)
# Loading a model runs its code (pickles are programs): it happens in a separate process
# with these limits, before anything is registered.
MODEL_CHECK_TIMEOUT_SECONDS = env_int("MODEL_CHECK_TIMEOUT_SECONDS", 120)
MODEL_CHECK_MEMORY_MB = env_int("MODEL_CHECK_MEMORY_MB", 4096)
# Model code (the check, `local` model servers) runs in a bubblewrap sandbox (core/sandbox.py):
# the bwrap executable, and the processes and /tmp size each sandbox may use. Where no
# sandbox can be had, model code is refused unless an admin allows it unsandboxed: for the
# registration check with ALLOW_UNSANDBOXED_MODEL_CHECK, for serving per environment (admin).
SANDBOX_BWRAP = env_str("SANDBOX_BWRAP", "bwrap")
SANDBOX_MAX_PROCESSES = env_int("SANDBOX_MAX_PROCESSES", 64)
SANDBOX_TMP_MB = env_int("SANDBOX_TMP_MB", 256)
ALLOW_UNSANDBOXED_MODEL_CHECK = env_bool("ALLOW_UNSANDBOXED_MODEL_CHECK", False)
# Small JSON parts of a registration (sample input, schemas, metrics) are held in memory.
REGISTRY_JSON_PART_MAX_BYTES = env_int("REGISTRY_JSON_PART_MAX_BYTES", 1024 * 1024)
# A JSON request body (a registration that references an upload carries its sample input
# and schemas inline) is read whole, so it is bounded.
API_JSON_MAX_BYTES = env_int("API_JSON_MAX_BYTES", 8 * 1024 * 1024)
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
# Resumable uploads: the part size unless the client asks for another (at most 10,000
# parts), how long an upload may sit idle before its bytes are swept, and how many
# unfinished uploads one person may hold.
UPLOAD_CHUNK_BYTES = env_int("UPLOAD_CHUNK_BYTES", 8 * 1024 * 1024)
UPLOAD_IDLE_HOURS = env_int("UPLOAD_IDLE_HOURS", 24)
# A finished upload whose registration was refused is kept this long from the refusal (for a
# retry with the same bytes), not a whole UPLOAD_IDLE_HOURS: refused tries must not pile up.
UPLOAD_REFUSED_HOURS = env_int("UPLOAD_REFUSED_HOURS", 2)
UPLOAD_MAX_OPEN = env_int("UPLOAD_MAX_OPEN", 20)
UPLOAD_MAX_OPEN_BYTES = env_int("UPLOAD_MAX_OPEN_BYTES", 4 * ARTIFACT_MAX_BYTES)
# A part whose bytes stop arriving for this long is given up (it is sent again whole).
UPLOAD_CHUNK_IDLE_SECONDS = env_int("UPLOAD_CHUNK_IDLE_SECONDS", 30)

# Deployments and the data plane
RUNTIME_DIR = Path(env_str("RUNTIME_DIR", str(VAR_DIR / "runtime")))
RUNTIME_DRAIN_SECONDS = env_int("RUNTIME_DRAIN_SECONDS", 10)
# `local` model servers answer on unix sockets, one directory each, under this directory
# (by default RUNTIME_DIR/sockets, or a private directory in /tmp when that path is too long
# for a socket address).
RUNTIME_SOCKET_DIR = env_str("RUNTIME_SOCKET_DIR", "")
RUNTIME_READY_TIMEOUT_SECONDS = env_int("RUNTIME_READY_TIMEOUT_SECONDS", 60)
DEPLOYMENT_LEASE_SECONDS = env_int("DEPLOYMENT_LEASE_SECONDS", 20)
# How often the autoscaler (`manage.py autoscale`, started by make run) reads the gateways'
# load and decides; the gateways' hold of a request for a route scaled to zero is
# GATEWAY_COLD_START_SECONDS (read by the gateway itself).
AUTOSCALE_INTERVAL_SECONDS = float(env_str("AUTOSCALE_INTERVAL_SECONDS", "0.5"))
# The docker runtime: DOCKER_HOST (or the local socket), the base image model images are
# built on (`python manage.py build_base_image`), and how long a container nothing owns
# may live before the reconciler removes it.
DOCKER_BASE_IMAGE = env_str("DOCKER_BASE_IMAGE", "portal-modelserver-base:1")
DOCKER_NETWORK = env_str("DOCKER_NETWORK", "")
DOCKER_ORPHAN_GRACE_SECONDS = env_int("DOCKER_ORPHAN_GRACE_SECONDS", 60)
# A registry every engine can pull from (host:port, e.g. 127.0.0.1:5000): the swarm runtime
# pushes each version's image there, and its services name it, so any node can run them.
DOCKER_REGISTRY = env_str("DOCKER_REGISTRY", "").rstrip("/")
# The swarm runtime publishes each instance's port on the node that runs it (host mode), from
# this range (low-high, below Linux's ephemeral ports); the gateways' firewall opening.
SWARM_PORTS = env_str("SWARM_PORTS", "30000-32767")
# The prediction log's defaults for a service in an environment that has not set its own:
# logged or not, the share sampled, whether payloads are kept, and for how many days.
PREDICTION_LOG_ENABLED = env_bool("PREDICTION_LOG_ENABLED", True)
PREDICTION_LOG_SAMPLE_RATE = float(env_str("PREDICTION_LOG_SAMPLE_RATE", "1.0"))
PREDICTION_LOG_PAYLOADS = env_bool("PREDICTION_LOG_PAYLOADS", True)
PREDICTION_LOG_RETENTION_DAYS = env_int("PREDICTION_LOG_RETENTION_DAYS", 30)
# Prometheus metrics at /metrics (Celery queues and task outcomes, the prediction log's
# backlog): off unless this token is set, then only for `Authorization: Bearer <token>`.
PORTAL_METRICS_TOKEN = env_str("PORTAL_METRICS_TOKEN", "")
# Where the worker writes the logged predictions (Parquet, by service, environment and day).
PREDICTION_LOG_ROOT = Path(env_str("PREDICTION_LOG_ROOT", str(VAR_DIR / "predictions")))
GATEWAY_URL = env_str("GATEWAY_URL", f"http://127.0.0.1:{env_int('GATEWAY_PORT', env_int('PORT', 8000) + 1)}")
# The portal's own address, for links in emails and webhooks.
PORTAL_URL = env_str("PORTAL_URL", f"http://127.0.0.1:{env_int('PORT', 8000)}").rstrip("/")

# Emails (alerts and notifications): SMTP from EMAIL_HOST on in production; otherwise written
# as files under var/mail, which is where `make run` leaves them (EMAIL_BACKEND=console
# prints them in the worker's output instead).
_EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
}
_email_backend = env_str("EMAIL_BACKEND", "smtp" if PRODUCTION or env_str("EMAIL_HOST") else "file")
if _email_backend not in _EMAIL_BACKENDS:
    raise ImproperlyConfigured(f"EMAIL_BACKEND={_email_backend!r} is unknown; use one of {', '.join(_EMAIL_BACKENDS)}.")
EMAIL_BACKEND = _EMAIL_BACKENDS[_email_backend]
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "portal@localhost")
# Webhooks: a delivery that fails is tried again after WEBHOOK_RETRY_SECONDS, then
# twice as long each time, WEBHOOK_MAX_ATTEMPTS times in all.
WEBHOOK_RETRY_SECONDS = float(env_str("WEBHOOK_RETRY_SECONDS", "30"))
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6)
# Notifications and webhook deliveries are removed once this many days old.
NOTIFICATION_RETENTION_DAYS = env_int("NOTIFICATION_RETENTION_DAYS", 90)
if NOTIFICATION_RETENTION_DAYS < 1:
    raise ImproperlyConfigured(
        f"NOTIFICATION_RETENTION_DAYS={NOTIFICATION_RETENTION_DAYS} would remove notifications as they are made; "
        "use 1 or more days."
    )
WEBHOOK_TIMEOUT_SECONDS = float(env_str("WEBHOOK_TIMEOUT_SECONDS", "10"))
# Webhooks leave from inside the network: addresses on private networks are refused unless
# allowed here, and hosts listed in WEBHOOK_ALLOWED_HOSTS are exempt from the address check.
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", [])

# Who may create teams: "anyone" who signs in, or only "approvers" (approvers and admins).
TEAM_CREATORS = env_str("TEAM_CREATORS", "anyone")
if TEAM_CREATORS not in {"anyone", "approvers"}:
    raise ImproperlyConfigured(f"TEAM_CREATORS={TEAM_CREATORS!r} is unknown; use 'anyone' or 'approvers'.")

# Single sign-on (OpenID Connect) and directory groups (LDAP); the README's "Single sign-on
# and directory groups" explains each variable. Secrets (OIDC_CLIENT_SECRET,
# LDAP_BIND_PASSWORD) are never logged or shown. Groups map to teams, roles and the approver
# role with one syntax, `group=team:role, ...` (accounts/mapping.py), checked here at startup.
OIDC_ISSUER = env_str("OIDC_ISSUER").strip().rstrip("/")
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID").strip()
OIDC_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET")
OIDC_ENABLED = bool(OIDC_ISSUER or OIDC_CLIENT_ID or OIDC_CLIENT_SECRET)
if OIDC_ENABLED:
    _oidc_missing = [name for name in ("OIDC_ISSUER", "OIDC_CLIENT_ID") if not globals()[name]]
    if _oidc_missing:
        raise ImproperlyConfigured(
            f"Single sign-on is half configured: {' and '.join(_oidc_missing)} "
            f"{'is' if len(_oidc_missing) == 1 else 'are'} not set. Set OIDC_ISSUER (the provider's issuer URL, "
            "e.g. https://login.example.com/realms/company) and OIDC_CLIENT_ID (and OIDC_CLIENT_SECRET for a "
            "confidential client), or unset all OIDC_ variables to sign in with passwords only."
        )
    if not OIDC_ISSUER.startswith(("https://", "http://")):
        raise ImproperlyConfigured(
            f"OIDC_ISSUER={OIDC_ISSUER!r} is not a URL; give the issuer, e.g. https://login.example.com."
        )
    if PRODUCTION and not OIDC_ISSUER.startswith("https://"):
        raise ImproperlyConfigured("OIDC_ISSUER must be an https:// URL in production.")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")
OIDC_SCOPES = env_str("OIDC_SCOPES", "openid email profile")
if OIDC_ENABLED and "openid" not in OIDC_SCOPES.split():
    raise ImproperlyConfigured(f"OIDC_SCOPES={OIDC_SCOPES!r} must include 'openid'.")
OIDC_MATCH_CLAIM = env_str("OIDC_MATCH_CLAIM", "email").strip()
OIDC_USERNAME_CLAIM = env_str("OIDC_USERNAME_CLAIM", "preferred_username").strip()
OIDC_CREATE_USERS = env_bool("OIDC_CREATE_USERS", True)
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups").strip()
OIDC_TEAM_MAP = parse_team_map(env_str("OIDC_TEAM_MAP"), "OIDC_TEAM_MAP")
OIDC_APPROVER_GROUPS = parse_group_list(env_str("OIDC_APPROVER_GROUPS"))
OIDC_TIMEOUT_SECONDS = env_int("OIDC_TIMEOUT_SECONDS", 10)

# The company directory: on only when LDAP_SERVER_URI is set; needs `pip install -r
# requirements-ldap.txt` (python-ldap builds from source). Then the directory's password is
# tried first, local passwords after it (so local admins get in while it is down).
LDAP_SERVER_URI = env_str("LDAP_SERVER_URI").strip()
LDAP_TEAM_MAP = parse_team_map(env_str("LDAP_TEAM_MAP"), "LDAP_TEAM_MAP")
LDAP_APPROVER_GROUPS = parse_group_list(env_str("LDAP_APPROVER_GROUPS"))
if LDAP_SERVER_URI:
    # AUTH_LDAP_SERVER_URI, AUTH_LDAP_USER_SEARCH, ... from the LDAP_ variables (the only
    # place python-ldap is imported at startup).
    globals().update(ldap_settings(os.environ))
    AUTHENTICATION_BACKENDS.insert(0, "accounts.directory.DirectoryBackend")

# Content-Security-Policy: scripts only from the portal's own files, never inline, and no
# connection, frame or form elsewhere. Inline styles stay allowed: the API docs' Redoc and
# the Django admin set some, and a style cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if OIDC_ENABLED:
    # Signing out after single sign-on posts the sign-out form and is answered with a redirect
    # to the provider's end_session_endpoint, which form-action must allow.
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["form-action"] = [SELF, "/".join(OIDC_ISSUER.split("/")[:3])]

# Tokens
API_TOKEN_DEFAULT_DAYS = env_int("API_TOKEN_DEFAULT_DAYS", 90)
API_TOKEN_MAX_DAYS = env_int("API_TOKEN_MAX_DAYS", 730)

# Security. HTTPS hardening applies in production; it can be relaxed behind a TLS-terminating
# proxy with SECURE_PROXY_SSL_HEADER_NAME instead of turning it off.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    _proxy_header = env_str("SECURE_PROXY_SSL_HEADER_NAME")
    if _proxy_header:
        SECURE_PROXY_SSL_HEADER = (_proxy_header, "https")

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
