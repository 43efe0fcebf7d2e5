"""Nebula settings: every knob comes from the environment (or a local `.env`), parsed strictly.

Two layouts share this module. *Distributed* (the default) talks to Redis at REDIS_URL for the
Celery broker, the channel layer, the cache and Nebula's own coordination (rate limits, GPU slots,
token streams, the usage ledger). *Standalone* (NEBULA_STANDALONE=1, chosen by `bin/run` when Redis
does not answer) keeps all of that in this one process: tasks on threads, the in-memory channel
layer, the local-memory cache and an in-process Redis for the coordination code.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from environs import Env, validate

from infra.channel_layers import redis_channel_layer

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = Env()
# marshmallow validators raise on a bad value (a plain lambda returning False would not).
POSITIVE = validate.Range(min=0, min_inclusive=False)
NON_NEGATIVE = validate.Range(min=0)
# A developer's `.env` (written by `bin/run` on first start) is read if present; real environment
# variables win over it.
env.read_env(env.str("NEBULA_ENV_FILE", str(BASE_DIR / ".env")), recurse=False)

TESTING = "pytest" in sys.modules or env.bool("NEBULA_TESTING", False)

DEBUG = env.bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG or TESTING:
        SECRET_KEY = "insecure-development-key-only-for-debug-and-tests"  # noqa: S105
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment (or .env); with DEBUG off there is "
            "no default."
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", [])

HOST = env.str("HOST", "127.0.0.1")
PORT = env.int("PORT", 8000, validate=validate.Range(min=1, max=65535))

NEBULA_VERSION = "0.1.0"
NEBULA_STANDALONE = env.bool("NEBULA_STANDALONE", False)
REDIS_URL = env.str("REDIS_URL", "redis://127.0.0.1:6379/0")

# --- Nebula behaviour -------------------------------------------------------------------------
# Requests per minute for a new key when none is given.
NEBULA_DEFAULT_RPM = env.int("NEBULA_DEFAULT_RPM", 10, validate=POSITIVE)
# /v1 requests without a usable key, per client address and minute, before they get 429s (and
# before an unknown key costs a database lookup).
NEBULA_UNAUTHENTICATED_RPM = env.int("NEBULA_UNAUTHENTICATED_RPM", 60, validate=POSITIVE)
# Multiplies every simulated GPU duration (model loading, prefill, decode). 0 = no waiting at all.
NEBULA_SIM_TIME_SCALE = env.float("NEBULA_SIM_TIME_SCALE", 1.0, validate=NON_NEGATIVE)
# How long a request may wait for a worker and a GPU slot before it gets 503.
NEBULA_QUEUE_TIMEOUT = env.float("NEBULA_QUEUE_TIMEOUT", 30.0, validate=POSITIVE)
# Tokens a worker's engine loop generates per step across the sequences that have no simulated
# time to wait (time scale 0): bounds a step's length, so a newcomer's wait for its first token.
NEBULA_ENGINE_STEP_TOKENS = env.int("NEBULA_ENGINE_STEP_TOKENS", 1024, validate=POSITIVE)
# PyTorch threads of a worker process's embedding model. Worker processes are the parallelism:
# more threads per process fight the other workers for the cores (2 threads on a busy 2-core
# machine ran 7 times slower than 1).
NEBULA_EMBEDDING_THREADS = env.int("NEBULA_EMBEDDING_THREADS", 1, validate=POSITIVE)
# A worker that has not reported for this long is considered dead.
NEBULA_WORKER_TTL = env.float("NEBULA_WORKER_TTL", 5.0, validate=POSITIVE)
NEBULA_HEARTBEAT_INTERVAL = env.float("NEBULA_HEARTBEAT_INTERVAL", 1.0, validate=POSITIVE)
# Seconds a Redis command may take before Redis counts as down (the API then answers 503).
NEBULA_REDIS_TIMEOUT = env.float("NEBULA_REDIS_TIMEOUT", 2.0, validate=POSITIVE)
# Upper bound on how long a key or model change can go unnoticed by a web process if the change
# notification could not reach Redis (normally changes are seen on the very next request).
NEBULA_CACHE_TTL = env.float("NEBULA_CACHE_TTL", 60.0, validate=POSITIVE)
# The fleet's GPUs, e.g. "H100-80GB=8,L4=4": deployments needing more than are free are refused
# (or queued). Empty: the simulated cloud has as many GPUs as anyone asks for. Checked against
# the GPU catalogue when the app loads (models_registry.apps).
NEBULA_GPU_INVENTORY: dict[str, int] = env.dict("NEBULA_GPU_INVENTORY", {}, subcast_values=int)
# Threads that run simulated inference in one worker process (or in-process when standalone).
NEBULA_WORKER_CONCURRENCY = env.int("NEBULA_WORKER_CONCURRENCY", 64, validate=POSITIVE)
# Background duties of each worker process: moving usage records from Redis into the database,
# and resending deployment work that got lost. Either can run elsewhere instead.
NEBULA_WORKER_LEDGER = env.bool("NEBULA_WORKER_LEDGER", True)
NEBULA_WORKER_RECONCILER = env.bool("NEBULA_WORKER_RECONCILER", True)
# Threads (so database connections) per web process for database work from async code.
NEBULA_DB_THREADS = env.int("NEBULA_DB_THREADS", 4, validate=POSITIVE)
# Request size limits for /v1/chat/completions.
NEBULA_MAX_BODY_BYTES = env.int("NEBULA_MAX_BODY_BYTES", 1_048_576, validate=POSITIVE)
# vLLM's extra sampling parameters (`ignore_eos`, `min_tokens`), which the simulated engine
# honours, are accepted by name; off, they are unknown parameters (400), as on OpenAI's API.
NEBULA_ACCEPT_VLLM_EXTRAS = env.bool("NEBULA_ACCEPT_VLLM_EXTRAS", True)
NEBULA_MAX_MESSAGES = env.int("NEBULA_MAX_MESSAGES", 256, validate=POSITIVE)
NEBULA_MAX_MESSAGE_CHARS = env.int("NEBULA_MAX_MESSAGE_CHARS", 200_000, validate=POSITIVE)
# One body limit for every endpoint (daphne enforces it as bytes arrive: infra.http_server).
DATA_UPLOAD_MAX_MEMORY_SIZE = NEBULA_MAX_BODY_BYTES
# A budget past this share of its amount (percent) is flagged on the dashboard and in /budgets.
NEBULA_BUDGET_ALERT_PERCENT = env.float("NEBULA_BUDGET_ALERT_PERCENT", 80.0, validate=POSITIVE)
# The benchmark's trivial baseline view (/bench/baseline); off unless `make bench` turns it on.
NEBULA_BENCH_BASELINE = env.bool("NEBULA_BENCH_BASELINE", False)
# --- Upstream engines (deployments with the openai-compatible backend) -------------------------
# Fernet keys that encrypt upstream API keys at rest, comma-separated: the first encrypts, all
# decrypt (rotation: put a new key first). Empty: one key derived from SECRET_KEY.
NEBULA_ENCRYPTION_KEYS: list[str] = env.list("NEBULA_ENCRYPTION_KEY", [])
for _fernet_key in NEBULA_ENCRYPTION_KEYS:
    try:
        if len(base64.urlsafe_b64decode(_fernet_key.encode())) != 32:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            "NEBULA_ENCRYPTION_KEY holds something that is not a Fernet key (32 url-safe base64 "
            "bytes; make one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)."
        ) from None
# How often the workers probe every upstream replica (/health, /v1/models, /metrics), and how
# long one probe may take before the replica counts as down.
NEBULA_UPSTREAM_PROBE_INTERVAL = env.float("NEBULA_UPSTREAM_PROBE_INTERVAL", 2.0, validate=POSITIVE)
NEBULA_UPSTREAM_PROBE_TIMEOUT = env.float("NEBULA_UPSTREAM_PROBE_TIMEOUT", 2.0, validate=POSITIVE)
# How long a new upstream deployment waits for one of its replicas to answer before it fails.
NEBULA_UPSTREAM_LOAD_TIMEOUT = env.float("NEBULA_UPSTREAM_LOAD_TIMEOUT", 120.0, validate=POSITIVE)
# Whether worker processes probe the upstreams (one at a time, by a Redis lock).
NEBULA_WORKER_PROBER = env.bool("NEBULA_WORKER_PROBER", True)
# Usage records are kept this many whole days, then rolled up into daily totals per key, model
# and status (telemetry.retention) by Celery beat every NEBULA_USAGE_ROLLUP_SECONDS; 0 keeps
# every record for ever.
NEBULA_USAGE_RETENTION_DAYS = env.int(
    "NEBULA_USAGE_RETENTION_DAYS", 30, validate=validate.Range(min=0, max=36500)
)
# The overview calls the service degraded when, over the last five minutes, at least
# NEBULA_DEGRADED_MIN_5XX answers and NEBULA_DEGRADED_5XX_RATE of all were server errors (5xx);
# client errors (4xx) never count.
NEBULA_DEGRADED_5XX_RATE = env.float(
    "NEBULA_DEGRADED_5XX_RATE", 0.05, validate=validate.Range(min=0, max=1, min_inclusive=False)
)
NEBULA_DEGRADED_MIN_5XX = env.int("NEBULA_DEGRADED_MIN_5XX", 5, validate=POSITIVE)
NEBULA_USAGE_ROLLUP_SECONDS = env.int("NEBULA_USAGE_ROLLUP_SECONDS", 3600, validate=POSITIVE)
# Where `bin/run` seeds the demo operator and user.
NEBULA_OPERATOR_USERNAME = env.str("NEBULA_OPERATOR_USERNAME", "operator")
NEBULA_OPERATOR_PASSWORD = env.str("NEBULA_OPERATOR_PASSWORD", "")
NEBULA_DEMO_USERNAME = env.str("NEBULA_DEMO_USERNAME", "demo")
NEBULA_DEMO_PASSWORD = env.str("NEBULA_DEMO_PASSWORD", "")

# --- Django -------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "nebula_site",
    "keys",
    "models_registry",
    "inference",
    "telemetry",
    "billing",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "infra.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "nebula_site.urls"
ASGI_APPLICATION = "nebula_site.asgi.application"
APPEND_SLASH = False

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
            ],
        },
    },
]

# SQLite by default; DATABASE_URL switches to PostgreSQL (or anything dj-database-url reads).
DATABASES = {
    "default": env.dj_db_url("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0)
}
_db = DATABASES["default"]
# Under ASGI each sync request runs in a thread of its own, so a connection kept for reuse is
# only ever reused by a thread that is gone: persistent connections would pile up, not help.
# Async hot paths use their own small pool of threads instead (infra.db).
_db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", 0)
_db["CONN_HEALTH_CHECKS"] = True
if _db["ENGINE"] == "django.db.backends.postgresql":
    # And a bounded pool of connections per process, so a burst of requests (each on a thread
    # of its own) cannot exhaust the server's max_connections.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("NEBULA_DB_POOL_SIZE", 8, validate=POSITIVE),
        # How long a request waits for a connection: when the server is down, this is how
        # long until the 503.
        "timeout": env.float("NEBULA_DB_POOL_TIMEOUT", 3.0, validate=POSITIVE),
    }  # with CONN_HEALTH_CHECKS, Django has the pool check each connection it hands out
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Web processes and workers write concurrently: WAL lets readers proceed during a write, and
    # IMMEDIATE transactions queue writers on the busy timeout instead of failing on upgrade.
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("TEST", {})["NAME"] = env.str(
        "NEBULA_TEST_SQLITE", str(BASE_DIR / ".test-db.sqlite3")
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard-overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if TESTING
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = TESTING or DEBUG

# --- Security -----------------------------------------------------------------------------------
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", False)
# Behind a proxy that terminates TLS: the header it sets, e.g. HTTP_X_FORWARDED_PROTO (its value
# must then be "https" for a secure request). Only set it if the proxy always sets the header.
_proxy_ssl_header = env.str("SECURE_PROXY_SSL_HEADER", "")
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header, "https") if _proxy_ssl_header else None
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# django-axes: lock an account+IP out after repeated failed logins (admin and dashboard).
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", 0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_ENABLED = env.bool("AXES_ENABLED", True)

# --- Redis-backed services ----------------------------------------------------------------------
CACHES: dict[str, dict[str, Any]]
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if NEBULA_STANDALONE:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "nebula-cache",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
    CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL, redis_timeout=NEBULA_REDIS_TIMEOUT)}

SESSION_ENGINE = "django.contrib.sessions.backends.db"
# Flash messages live in the server-side session, not in a cookie: the one that shows an admin
# a new key's secret must not travel back and forth as a (signed, readable) cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- Celery -------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
# kombu's Redis transport: one client per channel, and no crash on losing Redis mid-job
# (see infra.broker).
CELERY_BROKER_TRANSPORT = "infra.broker:Transport"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "celery"
# A job is acknowledged only after it ran, and a job whose worker vanished goes back on the queue.
# Duplicate deliveries are harmless: a job is claimed in Redis before it runs (inference.jobs).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Each thread takes one job at a time, so a busy worker does not hoard jobs another could run.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Unacknowledged jobs of a dead worker return to the queue after this long. Web processes
    # notice a dead worker much sooner (heartbeats) and resubmit themselves; this is the backstop
    # for when nobody is left to (the web process died too), and the redelivered job is then
    # settled by whichever worker gets it (inference.runner.JobRun.settle_orphan).
    "visibility_timeout": env.int("NEBULA_VISIBILITY_TIMEOUT", 300),
    # How often a worker looks for such jobs. kombu's default (a sweep every 10 s, but only every
    # 10th sweep scans) would leave them for up to 100 s past the visibility timeout.
    "unacked_restore_interval": env.int("NEBULA_UNACKED_RESTORE_INTERVAL", 10),
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = NEBULA_STANDALONE
# Celery beat (the Procfile's `beat`, exactly one per deployment) sends these. A tick that no
# worker took before the next one is dropped (`expires`), not piled up.
CELERY_BEAT_SCHEDULE = {
    "usage-rollup": {
        "task": "telemetry.usage_rollup",
        "schedule": float(NEBULA_USAGE_ROLLUP_SECONDS),
        "options": {"expires": float(NEBULA_USAGE_ROLLUP_SECONDS)},
    }
}

# --- DRF ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "keys.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["infra.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "infra.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Nebula API",
    "DESCRIPTION": "API keys, model deployments, usage metrics and an OpenAI-compatible API.",
    "VERSION": NEBULA_VERSION,
    # 3.1: the chat request's schema comes straight from its pydantic model (JSON Schema).
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # A team member's "role" is not a chat message's "role".
    "ENUM_NAME_OVERRIDES": {
        "TeamRoleEnum": "keys.models.TeamRole",
        "BackendEnum": "models_registry.models.Backend",
        "ModelKindEnum": "models_registry.models.ModelKind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.openapi.add_openai_paths",
    ],
}

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", "INFO")
LOG_FORMAT = env.str("LOG_FORMAT", "text", validate=validate.OneOf(["text", "json"]))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "infra.logging.RedactSecretsFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "axes": {"level": "WARNING"},
        # httpx logs a line per request to an upstream engine (at INFO): noise at load.
        "httpx": {"level": "WARNING"},
        # Celery's "Task ... received" and "... succeeded" lines, one pair per completion:
        # noise at hundreds of requests a second, and the usage ledger records every request.
        # Failures are still logged (at ERROR).
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
    },
}
