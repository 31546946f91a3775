"""Typed readers for environment settings.

Every reader raises ``ImproperlyConfigured`` naming the variable, so a bad deployment fails at
start-up with a message an operator can act on instead of a traceback deep inside a request.
Each variable is described in docs/settings.md; ``REQUESTED`` lets a test hold that page (and
``.env.example``) to exactly the variables the settings read.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# Every variable a reader was asked for, whether or not it was set.
REQUESTED: set[str] = set()


def _raw(name: str) -> str | None:
    REQUESTED.add(name)
    value = os.environ.get(name)
    return None if value is None else value.strip()


# --- Scalars ----------------------------------------------------------------------------------


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_optional_str(name: str) -> str | None:
    value = _raw(name)
    return value or None


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (true/false, 1/0, yes/no), got {value!r}."
    )


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from None
    _check_range(name, number, minimum, maximum)
    return number


def env_optional_int(
    name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """None when unset or empty: the consumer picks its own default."""
    value = _raw(name)
    if not value:
        return None
    return env_int(name, 0, minimum=minimum, maximum=maximum)


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}.")
    _check_range(name, number, minimum, maximum)
    return number


def env_list(name: str, default: Iterable[str]) -> list[str]:
    """Comma-separated list; set the variable to an empty string for an empty list."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: Iterable[str]) -> str:
    allowed = tuple(choices)
    value = env_str(name, default).lower()
    if value not in allowed:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def _check_range(name: str, number: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}.")


# --- Structured values ------------------------------------------------------------------------


def env_url(name: str, default: str) -> str:
    """An http(s) base URL: anything else would only fail at the first outbound call."""
    value = env_str(name, default)
    if not value.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"{name} must start with http:// or https://, got {value!r}.")
    return value


def env_dotted_path(name: str, default: str) -> str:
    """A dotted path such as package.module.function; imported when first used, not here."""
    value = env_str(name, default)
    parts = value.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ImproperlyConfigured(
            f"{name} must be a dotted path such as package.module.function, got {value!r}."
        )
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_log_level(name: str, default: str) -> str:
    value = env_str(name, default).upper()
    if value not in _LOG_LEVELS:
        raise ImproperlyConfigured(
            f"{name} must be one of {', '.join(_LOG_LEVELS)}; got {value!r}."
        )
    return value


def log_format_default() -> str:
    """text for a person at a terminal (`make run`), json for anything that collects the logs."""
    stream = sys.stderr
    try:
        return "text" if stream is not None and stream.isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def env_origins(name: str, default: Iterable[str]) -> list[str]:
    """Origins as Django's CSRF check compares them: scheme and host (and port), no path."""
    origins = env_list(name, default)
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if scheme not in {"http", "https"} or not rest or "/" in rest:
            raise ImproperlyConfigured(
                f"{name} entries must be origins such as https://admin.example.com "
                f"(scheme and host, no path); got {origin!r}."
            )
    return origins


def env_header_pair(name: str) -> tuple[str, str] | None:
    """HEADER,value with the header in Django's META form (SECURE_PROXY_SSL_HEADER's shape)."""
    raw = env_list(name, [])
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
            f"{name} must be a header in Django's META form and the value the "
            "proxy sets on HTTPS requests, such as HTTP_X_FORWARDED_PROTO,https; got "
            f"{','.join(raw)!r}."
        )
    return header, raw[1]


def env_proxy_address(name: str) -> str | None:
    """An IP address, or * for any peer: waitress compares the peer's address, never a name."""
    value = env_optional_str(name)
    if value is None or value == "*":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be the IP address the reverse proxy connects from (or * when "
            f"only proxies can reach the web port); got {value!r}."
        ) from None
    return value


# The forwarding headers waitress knows how to take from a trusted proxy.
_PROXY_HEADERS = {
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-by",
    "forwarded",
}


def env_proxy_headers(name: str, default: Iterable[str]) -> list[str]:
    """Lower-cased; waitress takes Forwarded alone or X-Forwarded-* headers, never both."""
    names = [header.lower() for header in env_list(name, default)]
    unknown = sorted(set(names) - _PROXY_HEADERS)
    if unknown or not names or ("forwarded" in names and len(names) > 1):
        raise ImproperlyConfigured(
            f"{name} must be either forwarded alone or some of "
            "x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-forwarded-port, "
            f"x-forwarded-by; got {','.join(names)!r}."
        )
    return names


def env_workspace_paths(name: str, default: Iterable[str]) -> list[str]:
    """Workspace path rules (a trailing / marks a prefix), already in the API's normal form."""
    rules = env_list(name, default)
    for rule in rules:
        if (
            rule.startswith("/")
            or "\\" in rule
            or any(segment in {"", ".", ".."} for segment in rule.rstrip("/").split("/"))
        ):
            raise ImproperlyConfigured(
                f"{name} entries must be normalised workspace paths (no leading /, "
                f"no empty, '.' or '..' segments, no backslashes); got {rule!r}."
            )
    return rules


def env_postgres_url(name: str) -> dict[str, Any] | None:
    """A PostgreSQL URL as Django's database settings; None when unset (the embedded server)."""
    url = env_optional_str(name)
    if url is None:
        return None
    try:
        config: dict[str, Any] = environ.Env.db_url_config(url)
    except Exception as error:  # django-environ raises assorted errors for garbage
        raise ImproperlyConfigured(f"{name} is not a valid database URL: {error}") from None
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            f"{name} must point at PostgreSQL (postgres:// or postgresql://)."
        )
    options = config.setdefault("OPTIONS", {})
    if not config.get("HOST") and "host" in options:
        # postgresql://user@/db?host=/run/postgresql&port=5432: a Unix socket directory.
        config["HOST"] = options.pop("host")
        config["PORT"] = options.pop("port", config.get("PORT", ""))
    return config


def env_secret_key(name: str, key_file: Path, *, shared_database: bool, debug: bool) -> str:
    """The configured key; else, for the single-host embedded run, one generated into key_file."""
    configured = env_optional_str(name)
    if configured:
        return configured
    # With a shared database the processes may run on several hosts behind one load balancer,
    # each of which would make a key of its own: a session signed on one would be refused by the
    # next.
    if shared_database and not debug:
        raise ImproperlyConfigured(
            f"{name} must be set when DATABASE_URL is set and DEBUG is off: every host "
            "sharing the database must sign with the same key. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    # Kept so sessions and signed values survive restarts without anyone ever running on a key
    # published in the repository. Written only here, never when a key is configured.
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


# --- Settings that are each valid alone but not together -----------------------------------


def ensure_not_above(name: str, value: float, limit_name: str, limit: float) -> None:
    if value > limit:
        raise ImproperlyConfigured(f"{name} ({value}) must not exceed {limit_name} ({limit}).")


def ensure_smaller(name: str, value: float, other_name: str, other: float) -> None:
    if value >= other:
        raise ImproperlyConfigured(
            f"{name} must be smaller than {other_name}, got {value} >= {other}."
        )


def ensure_stall_outlasts_heartbeats(
    name: str,
    stalled: float,
    heartbeat_name: str,
    heartbeat: float,
    *,
    at_stake: str = "make a live worker's jobs run twice",
) -> None:
    # A heartbeat that arrives a little late must not get a live worker's work taken from it.
    if stalled <= 2 * heartbeat:
        raise ImproperlyConfigured(
            f"{name} ({stalled}) must be more than twice {heartbeat_name} ({heartbeat}), or a "
            f"slow heartbeat would {at_stake}."
        )


def ensure_some_weight(names: tuple[str, str], weights: tuple[float, float], fusion: str) -> None:
    if fusion == "weighted" and not any(weights):
        raise ImproperlyConfigured(
            f"{names[0]} and {names[1]} cannot both be 0 with SEARCH_FUSION=weighted."
        )
