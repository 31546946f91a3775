"""Settings for ironclaw_site: one file, driven by environment variables.

docs/settings.md describes every variable (``.env.example`` lists them to copy). The readers in
``ironclaw_site.env`` parse and validate them: a bad value raises ``ImproperlyConfigured`` naming
the variable. This file only assigns.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import environ

from core.log_context import job_log_context, job_log_context_async
from core.metrics import pool_gauges_update_after_job
from ironclaw_site.database import (
    database_settings,
    database_through_pooler,
    process_connects_direct,
)
from ironclaw_site.env import (
    ensure_not_above,
    ensure_smaller,
    ensure_some_weight,
    ensure_stall_outlasts_heartbeats,
    env_bool,
    env_choice,
    env_dotted_path,
    env_float,
    env_header_pair,
    env_int,
    env_list,
    env_log_level,
    env_optional_int,
    env_optional_str,
    env_origins,
    env_postgres_url,
    env_proxy_address,
    env_proxy_headers,
    env_secret_key,
    env_str,
    env_url,
    env_workspace_paths,
    log_format_default,
)
from ironclaw_site.logging_config import logging_settings

BASE_DIR = Path(__file__).resolve().parent.parent
# First, so that every variable (IRONCLAW_VAR_DIR too) may come from .env; the environment wins.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
VAR_DIR = Path(env_str("IRONCLAW_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
_database_url = env_postgres_url("DATABASE_URL")
# A shared database means several hosts, which must all sign with one configured key.
SECRET_KEY = env_secret_key(
    "SECRET_KEY", VAR_DIR / "secret_key", shared_database=_database_url is not None, debug=DEBUG
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# A refused CSRF check outside the admin is the API's JSON 403, not Django's HTML page.
CSRF_FAILURE_VIEW = "core.error_views.csrf_failure"
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # Django's admin with the operators' site (the dashboard on its index).
    "operations.apps.OperatorsAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "pgtrigger",
    "procrastinate.contrib.django",
    "axes",
    "operations",
    "accounts",
    "conversations",
    "workspace",
    "engine",
    "webhooks",
    "routines",
]

MIDDLEWARE = [
    "core.middleware.RequestLogMiddleware",
    "core.middleware.UnknownHostMiddleware",
    "core.middleware.PathNotUtf8Middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out login before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "ironclaw_site.urls"
WSGI_APPLICATION = "ironclaw_site.wsgi.application"
ASGI_APPLICATION = "ironclaw_site.asgi.application"

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

# --- HTTPS and the reverse proxy (production) -------------------------------------------------
# The defaults suit `make run` on plain HTTP; docs/settings.md has the values behind a TLS proxy.

# The web server takes X-Forwarded-* / Forwarded from this peer only, so no client can claim HTTPS.
WEB_TRUSTED_PROXY = env_proxy_address("WEB_TRUSTED_PROXY")
WEB_TRUSTED_PROXY_HEADERS = env_proxy_headers(
    "WEB_TRUSTED_PROXY_HEADERS", ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
)
WEB_TRUSTED_PROXY_COUNT = env_int("WEB_TRUSTED_PROXY_COUNT", 1, minimum=1, maximum=16)
# Only behind a proxy that always sets (or strips) it: otherwise a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = env_header_pair("SECURE_PROXY_SSL_HEADER")
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# A load balancer probes over plain HTTP: a redirect would read as "down".
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0, maximum=2 * 365 * 86_400)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# --- Database ---------------------------------------------------------------------------------

DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 30, minimum=1, maximum=1000)
DATABASE_POOL_TIMEOUT = env_int("DATABASE_POOL_TIMEOUT", 10, minimum=1, maximum=300)
DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1, maximum=300)
# Spares every request the pool timeout while the database is known to be down.
DATABASE_FAIL_FAST_SECONDS = env_float("DATABASE_FAIL_FAST_SECONDS", 1.0, minimum=0.0, maximum=60.0)
EMBEDDED_DATABASE_DIR = Path(env_str("EMBEDDED_DATABASE_DIR", str(VAR_DIR / "pgdata")))
EMBEDDED_DATABASE_NAME = env_str("EMBEDDED_DATABASE_NAME", "ironclaw")
# PostgreSQL itself when DATABASE_URL is a transaction pooler: workers, migrations and listeners.
_database_direct_url = env_postgres_url("DATABASE_DIRECT_URL")
_connects_direct = process_connects_direct(sys.argv)
DATABASE_THROUGH_POOLER = database_through_pooler(
    _database_url, _database_direct_url, connects_direct=_connects_direct
)
# Prepared statements for the statements bound server-side (runtime writes, hot fixed SQL); off
# through a pooler, which cannot keep them (PgBouncer before 1.21 in transaction mode).
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", not DATABASE_THROUGH_POOLER)
DATABASES = {
    "default": database_settings(
        _database_url,
        embedded_dir=EMBEDDED_DATABASE_DIR,
        embedded_name=EMBEDDED_DATABASE_NAME,
        pool_size=DATABASE_POOL_SIZE,
        pool_timeout=DATABASE_POOL_TIMEOUT,
        connect_timeout=DATABASE_CONNECT_TIMEOUT,
        prepared_statements=DATABASE_PREPARED_STATEMENTS,
        direct_url_config=_database_direct_url,
        connects_direct=_connects_direct,
    )
}
# `manage.py serve` then supervises the embedded server too (starts it again if it dies).
USING_EMBEDDED_DATABASE = _database_url is None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Internationalisation, static files -------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# ISO dates in the admin, whatever the locale (ironclaw_site/formats/en/formats.py).
FORMAT_MODULE_PATH = ["ironclaw_site.formats"]

STATIC_URL = "static/"
# Created by collectstatic (`make run` runs it), never at import: the source tree may be read-only.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders when collectstatic has not run (tests, `manage.py`
# in a fresh clone); `make run` collects them so the production path reads from STATIC_ROOT.
WHITENOISE_USE_FINDERS = True

# --- REST API ---------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.SafeJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50, minimum=1, maximum=1000),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.ApiKeyRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}

# Token buckets in PostgreSQL (accounts.RateLimitBucket), per key and per tenant; 0 turns one off.
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 600, minimum=0, maximum=1_000_000)
RATE_LIMIT_TENANT_PER_MINUTE = env_int(
    "RATE_LIMIT_TENANT_PER_MINUTE", 1200, minimum=0, maximum=1_000_000
)

# Idempotency-Key: how long a stored response is replayed, and how long a repeat waits for the
# first request with its key to finish before a 409 idempotency_in_progress.
IDEMPOTENCY_TTL_HOURS = env_int("IDEMPOTENCY_TTL_HOURS", 24, minimum=1, maximum=24 * 30)
IDEMPOTENCY_WAIT_SECONDS = env_float("IDEMPOTENCY_WAIT_SECONDS", 10.0, minimum=0.1, maximum=60.0)
# Long-polls wake on NOTIFY; a waiter also re-checks this often, in case a notification was lost
# (the listener reconnecting after a database restart).
NOTIFY_FALLBACK_POLL_SECONDS = env_float(
    "NOTIFY_FALLBACK_POLL_SECONDS", 1.0, minimum=0.05, maximum=300.0
)

SPECTACULAR_SETTINGS = {
    "TITLE": "ironclaw_site API",
    "DESCRIPTION": "State service for a multi-tenant AI agent platform: conversations, threads "
    "and per-tenant workspaces.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.add_common_error_responses",
        "accounts.schema.document_rate_limits",
        "accounts.schema.document_tenant_header",
    ],
}

# --- Admin login throttle (django-axes) -----------------------------------------------------

# Locks out a (username, REMOTE_ADDR) pair, never an address alone: nobody can lock every admin out.
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
ADMIN_LOGIN_COOLOFF_MINUTES = env_int(
    "ADMIN_LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60
)
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=ADMIN_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Failures are kept (that is the throttle); a log of every successful login is not.
AXES_DISABLE_ACCESS_LOG = True

# --- Background work --------------------------------------------------------------------------

PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"
# Pruned hourly by the background worker (`manage.py prune_jobs` on demand); 0 keeps jobs for ever.
JOBS_RETENTION_DAYS = env_int("JOBS_RETENTION_DAYS", 7, minimum=0, maximum=36_500)
# Every worker built from the app: a job runs in the log context (request id) of the request that
# deferred it, and the pool gauges are refreshed after it.
PROCRASTINATE_WORKER_DEFAULTS = {
    "task_middleware": [job_log_context, job_log_context_async],
    "worker_middleware": [pool_gauges_update_after_job],
}

# --- Conversations ----------------------------------------------------------------------------

# How long a message waits for a conversation's row lock before answering 409 conversation_busy.
CONVERSATION_LOCK_TIMEOUT_MS = env_int(
    "CONVERSATION_LOCK_TIMEOUT_MS", 2000, minimum=1, maximum=60_000
)
CONVERSATION_DEFAULT_BUSY_POLICY = env_choice(
    "CONVERSATION_DEFAULT_BUSY_POLICY", "inject", ("inject", "queue", "reject", "interrupt")
)
CONVERSATION_MAX_MESSAGE_BYTES = env_int(
    "CONVERSATION_MAX_MESSAGE_BYTES", 65_536, minimum=1, maximum=10 * 1024 * 1024
)
THREAD_DEFAULT_LEASE_SECONDS = env_int("THREAD_DEFAULT_LEASE_SECONDS", 60, minimum=1, maximum=3600)
THREAD_MAX_LEASE_SECONDS = env_int("THREAD_MAX_LEASE_SECONDS", 3600, minimum=1, maximum=86_400)
ensure_not_above(
    "THREAD_DEFAULT_LEASE_SECONDS",
    THREAD_DEFAULT_LEASE_SECONDS,
    "THREAD_MAX_LEASE_SECONDS",
    THREAD_MAX_LEASE_SECONDS,
)
# What runs a spawned thread: the reference engine, or wait_for_external_engine (threads/next).
THREAD_RUNNER = env_dotted_path("THREAD_RUNNER", "engine.runner.run_thread")

# --- Engine (the reference runner) -----------------------------------------------------------

ENGINE_MODEL = env_choice("ENGINE_MODEL", "echo", ("echo", "openai"))
# The echo model stands in for a model; steps and step bytes let a benchmark grow checkpoints.
ENGINE_ECHO_LATENCY_MS = env_int("ENGINE_ECHO_LATENCY_MS", 200, minimum=0, maximum=600_000)
ENGINE_ECHO_STEPS = env_int("ENGINE_ECHO_STEPS", 1, minimum=1, maximum=1000)
ENGINE_ECHO_STEP_BYTES = env_int("ENGINE_ECHO_STEP_BYTES", 0, minimum=0, maximum=10 * 1024 * 1024)
ENGINE_BASE_URL = env_url("ENGINE_BASE_URL", "https://api.openai.com/v1")
ENGINE_API_KEY = env_optional_str("ENGINE_API_KEY")
ENGINE_MODEL_NAME = env_str("ENGINE_MODEL_NAME", "gpt-4o-mini")
ENGINE_MODEL_TIMEOUT_S = env_float("ENGINE_MODEL_TIMEOUT_S", 120.0, minimum=0.1, maximum=3600.0)
ENGINE_MODEL_MAX_RETRIES = env_int("ENGINE_MODEL_MAX_RETRIES", 2, minimum=0, maximum=10)
# Prices for the usage figures (USD per million tokens); 0 records no cost.
ENGINE_INPUT_COST_PER_MILLION = env_float("ENGINE_INPUT_COST_PER_MILLION", 0.0, minimum=0.0)
ENGINE_OUTPUT_COST_PER_MILLION = env_float("ENGINE_OUTPUT_COST_PER_MILLION", 0.0, minimum=0.0)
ENGINE_HISTORY_ENTRIES = env_int("ENGINE_HISTORY_ENTRIES", 20, minimum=0, maximum=10_000)
# Messages injected while the model works are answered together, once the inbox has been quiet
# this long (at most four such waits a step); 0 answers them at once.
ENGINE_INBOX_DEBOUNCE_MS = env_int("ENGINE_INBOX_DEBOUNCE_MS", 250, minimum=0, maximum=10_000)
# The model's text goes out as it is produced (NOTIFY ironclaw_deltas): the first delta of a
# step at once, then at most one per this interval, and the last; 0 publishes none.
ENGINE_DELTA_INTERVAL_MS = env_int("ENGINE_DELTA_INTERVAL_MS", 200, minimum=0, maximum=60_000)
ENGINE_MAX_ITERATIONS = env_int("ENGINE_MAX_ITERATIONS", 10, minimum=1, maximum=10_000)
ENGINE_TURN_TIMEOUT_S = env_int("ENGINE_TURN_TIMEOUT_S", 300, minimum=1, maximum=86_400)
# A turn whose worker dies resumes when the lease is given up (at the latest when it expires);
# the heartbeat is how fast interrupts land.
ENGINE_LEASE_SECONDS = env_int("ENGINE_LEASE_SECONDS", 30, minimum=1, maximum=3600)
ENGINE_HEARTBEAT_SECONDS = env_float("ENGINE_HEARTBEAT_SECONDS", 2.0, minimum=0.05, maximum=600.0)
ensure_not_above(
    "ENGINE_LEASE_SECONDS",
    ENGINE_LEASE_SECONDS,
    "THREAD_MAX_LEASE_SECONDS",
    THREAD_MAX_LEASE_SECONDS,
)
# Threads of one process: a turn holds no database connection while its model works.
ENGINE_CONCURRENCY = env_int("ENGINE_CONCURRENCY", 32, minimum=1, maximum=1024)
# Checkpoints of threads ended this long ago (and not written since) are deleted hourly by the
# background worker (`manage.py prune_checkpoints` on demand); 0 keeps them for ever.
RUNTIME_RETENTION_DAYS = env_int("RUNTIME_RETENTION_DAYS", 7, minimum=0, maximum=36_500)

# --- Workers and readiness --------------------------------------------------------------------

BACKGROUND_CONCURRENCY = env_int("BACKGROUND_CONCURRENCY", 2, minimum=1, maximum=256)
# A worker silent for WORKER_STALLED_SECONDS is dead: /readyz misses it, its jobs are retried.
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 2.0, minimum=0.1, maximum=600.0)
WORKER_STALLED_SECONDS = env_float("WORKER_STALLED_SECONDS", 30.0, minimum=0.5, maximum=3600.0)
ensure_stall_outlasts_heartbeats(
    "WORKER_STALLED_SECONDS",
    WORKER_STALLED_SECONDS,
    "WORKER_HEARTBEAT_SECONDS",
    WORKER_HEARTBEAT_SECONDS,
)
# Every turn worker sweeps leases every TURN_WORKER_SWEEP_SECONDS: expired ones, and those of
# turn workers silent for TURN_WORKER_DEAD_SECONDS, whose turns then resume within seconds.
TURN_WORKER_DEAD_SECONDS = env_float("TURN_WORKER_DEAD_SECONDS", 10.0, minimum=0.5, maximum=3600.0)
TURN_WORKER_SWEEP_SECONDS = env_float("TURN_WORKER_SWEEP_SECONDS", 2.0, minimum=0.1, maximum=3600.0)
# Every background worker retries the jobs of dead workers this often (a job left "doing" by a
# worker whose heartbeat is WORKER_STALLED_SECONDS old).
STALLED_JOBS_SWEEP_SECONDS = env_float(
    "STALLED_JOBS_SWEEP_SECONDS", 10.0, minimum=0.1, maximum=3600.0
)
ensure_stall_outlasts_heartbeats(
    "TURN_WORKER_DEAD_SECONDS",
    TURN_WORKER_DEAD_SECONDS,
    "WORKER_HEARTBEAT_SECONDS",
    WORKER_HEARTBEAT_SECONDS,
    at_stake="take a live turn worker's turns from it",
)
# `manage.py serve` sets both for its web processes from the workers it runs.
READYZ_WORKERS = env_list("READYZ_WORKERS", [])
READYZ_REQUIRE_WORKER = env_bool("READYZ_REQUIRE_WORKER", False)

# The admin dashboard's health verdict (operations.health_verdict): degraded past each amber
# figure, down past a red one (the oldest turn's wait; failed turns when none completed).
HEALTH_QUEUE_WAIT_AMBER_SECONDS = env_float("HEALTH_QUEUE_WAIT_AMBER_SECONDS", 30.0, minimum=1.0)
HEALTH_QUEUE_WAIT_RED_SECONDS = env_float("HEALTH_QUEUE_WAIT_RED_SECONDS", 120.0, minimum=1.0)
HEALTH_FAILED_TURNS_AMBER = env_int("HEALTH_FAILED_TURNS_AMBER", 1, minimum=1)
HEALTH_FAILED_TURNS_RED = env_int("HEALTH_FAILED_TURNS_RED", 10, minimum=1)
for _amber, _red in [
    ("HEALTH_QUEUE_WAIT_AMBER_SECONDS", "HEALTH_QUEUE_WAIT_RED_SECONDS"),
    ("HEALTH_FAILED_TURNS_AMBER", "HEALTH_FAILED_TURNS_RED"),
]:
    ensure_not_above(_amber, globals()[_amber], _red, globals()[_red])
HEALTH_BACKLOG_AMBER_SECONDS = env_float("HEALTH_BACKLOG_AMBER_SECONDS", 300.0, minimum=1.0)
HEALTH_EMBEDDING_ERRORS_AMBER = env_int("HEALTH_EMBEDDING_ERRORS_AMBER", 1, minimum=1)
HEALTH_DB_POOL_WAITING_AMBER = env_int("HEALTH_DB_POOL_WAITING_AMBER", 5, minimum=1)

# --- Workspace --------------------------------------------------------------------------------

# Engine runtime state: one upsert per write, never versioned, chunked or embedded.
WORKSPACE_RUNTIME_PATHS = env_workspace_paths(
    "WORKSPACE_RUNTIME_PATHS",
    [
        "engine/.runtime/",
        "engine/projects/",
        "engine/orchestrator/failures.json",
        "engine/README.md",
    ],
)
WORKSPACE_CHUNK_WORDS = env_int("WORKSPACE_CHUNK_WORDS", 800, minimum=10, maximum=100_000)
WORKSPACE_CHUNK_OVERLAP = env_float("WORKSPACE_CHUNK_OVERLAP", 0.15, minimum=0.0, maximum=0.5)
WORKSPACE_CHUNK_MIN_WORDS = env_int("WORKSPACE_CHUNK_MIN_WORDS", 50, minimum=0, maximum=100_000)
ensure_smaller(
    "WORKSPACE_CHUNK_MIN_WORDS",
    WORKSPACE_CHUNK_MIN_WORDS,
    "WORKSPACE_CHUNK_WORDS",
    WORKSPACE_CHUNK_WORDS,
)
WORKSPACE_INDEXING = env_choice("WORKSPACE_INDEXING", "queue", ("queue", "inline"))
INDEXING_PENDING_REQUEUE_SECONDS = env_int(
    "INDEXING_PENDING_REQUEUE_SECONDS", 300, minimum=1, maximum=7 * 24 * 3600
)
WORKSPACE_LOCK_TIMEOUT_MS = env_int("WORKSPACE_LOCK_TIMEOUT_MS", 5000, minimum=1, maximum=60_000)
WORKSPACE_MAX_DOCUMENT_BYTES = env_int(
    "WORKSPACE_MAX_DOCUMENT_BYTES", 5 * 1024 * 1024, minimum=1024, maximum=512 * 1024 * 1024
)
# A document at the limit, JSON-escaped, may double: Django's body check must sit above that so
# the workspace views answer their clear 413 rather than Django a generic 400.
WORKSPACE_MAX_REQUEST_BYTES = 2 * WORKSPACE_MAX_DOCUMENT_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, WORKSPACE_MAX_REQUEST_BYTES)

EMBEDDING_PROVIDER = env_choice("EMBEDDING_PROVIDER", "hashing", ("none", "hashing", "openai"))
EMBEDDING_BASE_URL = env_url("EMBEDDING_BASE_URL", "https://api.openai.com/v1")
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "text-embedding-3-small")
EMBEDDING_API_KEY = env_optional_str("EMBEDDING_API_KEY")
# None: the hashing provider uses 256 and the openai provider the model's native size.
EMBEDDING_DIMENSIONS = env_optional_int("EMBEDDING_DIMENSIONS", minimum=1, maximum=16_000)
EMBEDDING_TIMEOUT = env_float("EMBEDDING_TIMEOUT", 30.0, minimum=0.1, maximum=600.0)
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64, minimum=1, maximum=2048)
EMBEDDING_MAX_RETRIES = env_int("EMBEDDING_MAX_RETRIES", 3, minimum=0, maximum=10)

SEARCH_RRF_K = env_int("SEARCH_RRF_K", 60, minimum=1, maximum=10_000)
SEARCH_CANDIDATES = env_int("SEARCH_CANDIDATES", 50, minimum=1, maximum=1000)
SEARCH_MAX_LIMIT = env_int("SEARCH_MAX_LIMIT", 100, minimum=1, maximum=1000)
SEARCH_FUSION = env_choice("SEARCH_FUSION", "rrf", ("rrf", "weighted"))
SEARCH_RECALL_FLOOR = env_float("SEARCH_RECALL_FLOOR", 0.95, minimum=0.0, maximum=1.0)
SEARCH_VECTOR_INDEX = env_choice("SEARCH_VECTOR_INDEX", "auto", ("auto", "off"))
SEARCH_HNSW_MIN_CHUNKS = env_int("SEARCH_HNSW_MIN_CHUNKS", 10_000, minimum=1)
SEARCH_HNSW_EF_SEARCH = env_int("SEARCH_HNSW_EF_SEARCH", 100, minimum=1, maximum=1000)
# Even weights suit rrf; weighted fusion leans on the vector leg unless told otherwise.
SEARCH_FTS_WEIGHT = env_float(
    "SEARCH_FTS_WEIGHT", 0.3 if SEARCH_FUSION == "weighted" else 0.5, minimum=0.0
)
SEARCH_VECTOR_WEIGHT = env_float(
    "SEARCH_VECTOR_WEIGHT", 0.7 if SEARCH_FUSION == "weighted" else 0.5, minimum=0.0
)
ensure_some_weight(
    ("SEARCH_FTS_WEIGHT", "SEARCH_VECTOR_WEIGHT"),
    (SEARCH_FTS_WEIGHT, SEARCH_VECTOR_WEIGHT),
    SEARCH_FUSION,
)

# --- Logging ----------------------------------------------------------------------------------

LOG_LEVEL = env_log_level("LOG_LEVEL", "INFO")
# Unset: text for a person at a terminal, json (one object per line) for a log collector.
LOG_FORMAT = env_choice("LOG_FORMAT", log_format_default(), ("json", "text"))
LOGGING = logging_settings(level=LOG_LEVEL, log_format=LOG_FORMAT)

# --- Metrics -----------------------------------------------------------------------------------

# PROMETHEUS_MULTIPROC_DIR of every process `manage.py serve` starts; serve empties it at start.
METRICS_DIR = Path(env_str("METRICS_DIR", str(VAR_DIR / "metrics")))
# Unset: only loopback clients may scrape /metrics.
METRICS_TOKEN = env_optional_str("METRICS_TOKEN")

# --- Web server (read by `manage.py serve`) ---------------------------------------------------

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
# Default 2 x 40 threads: 60 long-polls (30 s each at most) leave 20 threads for everything else.
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 2, minimum=1, maximum=64)
WEB_THREADS = env_int("WEB_THREADS", 40, minimum=1, maximum=1024)
WEB_REQUEST_TIMEOUT = env_int("WEB_REQUEST_TIMEOUT", 30, minimum=1, maximum=3600)
# Longer than a long-poll (30 s) holds a thread, so only a stuck process is killed.
WEB_HANG_SECONDS = env_int("WEB_HANG_SECONDS", 90, minimum=3, maximum=3600)
# Room for the longest workspace path percent-encoded.
WEB_MAX_HEADER_BYTES = env_int("WEB_MAX_HEADER_BYTES", 65_536, minimum=16_384, maximum=16_777_216)
# Event streams (core.streams), per web process: its hub serves them all on one thread.
STREAMS_PER_KEY = env_int("STREAMS_PER_KEY", 100, minimum=1, maximum=100_000)
STREAM_READ_THREADS = env_int("STREAM_READ_THREADS", 2, minimum=1, maximum=64)
STREAM_KEEPALIVE_SECONDS = env_int("STREAM_KEEPALIVE_SECONDS", 15, minimum=1, maximum=300)
STREAM_MAX_SECONDS = env_int("STREAM_MAX_SECONDS", 300, minimum=1, maximum=86_400)
STREAM_BUFFER_BYTES = env_int(
    "STREAM_BUFFER_BYTES", 1_048_576, minimum=65_536, maximum=256 * 1024 * 1024
)

# Routines and webhooks: their own module, imported after .env is read (at the top).
from ironclaw_site.automation_settings import *  # noqa: E402, F403
