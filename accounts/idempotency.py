"""``Idempotency-Key``: a client that repeats a POST whose answer it lost gets the first answer
back, and the work is done once.

The key's row (accounts.IdempotencyKey) is inserted by the first statement of the request's
transaction and holds the response when that transaction commits, so a crash leaves both the
work and the key, or neither. A repeat that arrives while the first request runs waits on the
row's unique index (up to ``IDEMPOTENCY_WAIT_SECONDS``, then 409 ``idempotency_in_progress``),
and then replays the stored response with ``Idempotent-Replayed: true``. The same key with
another method, path or body is a 422 ``idempotency_key_reused``.

Only successful answers are kept: an error rolls the key back with the work (the client may
retry, say, after a 409 conversation_busy), and so does an answer with nothing done (204).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import psycopg
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from accounts.authentication import ApiPrincipal
from accounts.models import IdempotencyKey
from core.api.schema import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PARAMETER
from core.db import LOCK_TIMEOUT_BOUND_SQL, lock_timeout_value
from core.errors import ApplicationError, Conflict, InvalidInput

logger = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
# 1-255 printable ASCII characters (a UUID is the usual choice).
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Expired keys are deleted in batches this size, one short transaction each.
PRUNE_BATCH = 1000


class IdempotencyKeyInvalid(InvalidInput):
    code = "invalid_idempotency_key"
    default_message = f"{IDEMPOTENCY_KEY_HEADER} must be 1-255 printable ASCII characters."


class IdempotencyKeyReused(ApplicationError):
    status_code = 422
    code = "idempotency_key_reused"
    default_message = (
        f"This {IDEMPOTENCY_KEY_HEADER} was sent with another method, path or body; "
        "use a new key for a new request."
    )


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    default_message = (
        f"A request with this {IDEMPOTENCY_KEY_HEADER} is still running; retry after it ends."
    )
    retry_after = 1


@dataclass(frozen=True)
class IdempotentCall:
    """A request that carries a key: whose it is, and what it asked."""

    api_key_id: int
    user_id: str
    key: str
    fingerprint: str


def idempotent_call(request: Request) -> IdempotentCall | None:
    """The request's key, or None when it sent none. Reads (and so parses) the body."""
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return None
    if not _VALID_KEY.fullmatch(key):
        raise IdempotencyKeyInvalid(
            details={IDEMPOTENCY_KEY_HEADER: ["Must be 1-255 printable ASCII characters."]}
        )
    principal = cast(ApiPrincipal, request.user)
    # The parsed body, canonically: a retry that re-serialises the same JSON matches.
    body = json.dumps(
        request.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    what = f"{request.method} {request.get_full_path()}\n{body}"
    return IdempotentCall(
        api_key_id=principal.api_key_id,
        user_id=principal.user_id,
        key=key,
        fingerprint=hashlib.sha256(what.encode()).hexdigest(),
    )


_TABLE = IdempotencyKey._meta.db_table
# Inserts the key, or takes over an expired one; returns nothing when a live row holds it. A row
# that another transaction is inserting is waited for, within the lock timeout this statement
# sets first (its one-time filter runs before the insert).
_CLAIM_SQL = f"""
INSERT INTO {_TABLE} AS k
    (api_key_id, user_id, key, fingerprint, response_status, response_body, created_at)
SELECT %s, %s, %s, %s, 0, '', now()
WHERE {LOCK_TIMEOUT_BOUND_SQL}
ON CONFLICT (api_key_id, user_id, key) DO UPDATE SET
    fingerprint = EXCLUDED.fingerprint,
    response_status = 0,
    response_body = '',
    created_at = now()
WHERE k.created_at < now() - make_interval(hours => %s)
RETURNING id
"""
_STORED_SQL = (
    f"SELECT fingerprint, response_status, response_body FROM {_TABLE}"
    " WHERE api_key_id = %s AND user_id = %s AND key = %s"
)
_RECORD_SQL = (
    f"UPDATE {_TABLE} SET response_status = %s, response_body = %s WHERE id = %s AND user_id = %s"
)
_FORGET_SQL = f"DELETE FROM {_TABLE} WHERE id = %s AND user_id = %s"


def idempotent_run(call: IdempotentCall, work: Callable[[], Response | None]) -> Response | None:
    """Run ``work`` once for ``call``'s key: in one transaction with the key's row, or not at
    all when the key already has a response (replayed). ``work`` returning None means nothing
    was done (a claim that found no thread): the key is not kept."""
    wait_ms = max(1, round(settings.IDEMPOTENCY_WAIT_SECONDS * 1000))
    with transaction.atomic():
        with connection.cursor() as cursor:
            try:
                cursor.execute(
                    _CLAIM_SQL,
                    [
                        call.api_key_id,
                        call.user_id,
                        call.key,
                        call.fingerprint,
                        lock_timeout_value(wait_ms),
                        settings.IDEMPOTENCY_TTL_HOURS,
                    ],
                )
            except OperationalError as error:
                if isinstance(error.__cause__, psycopg.errors.LockNotAvailable):
                    raise IdempotencyInProgress() from None
                raise
            claimed = cursor.fetchone()
            if claimed is None:
                return _replay(cursor, call)
        (row_id,) = claimed
        response = work()
        with connection.cursor() as cursor:
            if response is None:
                transaction.set_rollback(True)
            elif 200 <= response.status_code < 300 and response.status_code != 204:
                body = json.dumps(response.data, cls=JSONEncoder, ensure_ascii=False)
                cursor.execute(_RECORD_SQL, [response.status_code, body, row_id, call.user_id])
            else:
                cursor.execute(_FORGET_SQL, [row_id, call.user_id])
        return response


def _replay(cursor: Any, call: IdempotentCall) -> Response:
    cursor.execute(_STORED_SQL, [call.api_key_id, call.user_id, call.key])
    stored = cursor.fetchone()
    if stored is None:  # pruned between the two statements: the retry starts afresh
        raise IdempotencyInProgress()
    fingerprint, status, body = stored
    if fingerprint != call.fingerprint:
        raise IdempotencyKeyReused(details={IDEMPOTENCY_KEY_HEADER: [call.key]})
    logger.info("idempotency: replayed the response to key %r", call.key)
    response = Response(json.loads(body), status=status)
    response[REPLAYED_HEADER] = "true"
    return response


_Method = TypeVar("_Method", bound=Callable[..., Response])


def idempotent(method: _Method) -> _Method:
    """An APIView's POST handler, made idempotent for requests that send ``Idempotency-Key``
    (and documented with the header). Requests without it run as before, with no extra
    statement."""

    @functools.wraps(method)
    def handler(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        call = idempotent_call(request)
        if call is None:
            return method(view, request, *args, **kwargs)
        response = idempotent_run(call, lambda: method(view, request, *args, **kwargs))
        assert response is not None  # a view always answers
        return response

    return cast(_Method, extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER])(handler))


def idempotency_keys_prune(*, batch: int = PRUNE_BATCH) -> int:
    """Delete keys older than ``IDEMPOTENCY_TTL_HOURS`` in batches, skipping rows a request is
    taking over; the number deleted."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {_TABLE} WHERE id IN (SELECT id FROM {_TABLE}"
                " WHERE created_at < %s ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)",
                [cutoff, batch],
            )
            count = cursor.rowcount
        deleted += count
        if count < batch:
            return deleted
