"""The request id and tenant every log line carries, in a request and in the jobs it enqueues.

A request's id comes from its ``X-Request-Id`` header (or is generated) and lives in a context
variable for as long as the request runs; authentication adds the tenant. A job deferred meanwhile
carries the id in its arguments under ``JOB_REQUEST_ID_ARG`` (``job_args()``), and the worker's
task middleware (``job_log_context``) takes it out again before the task runs, so task functions
never see it and a job deferred without it runs the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_LENGTH = 128
# Leading underscore: no task parameter can be named like it by accident.
JOB_REQUEST_ID_ARG = "_request_id"

_request_id: ContextVar[str | None] = ContextVar("log_request_id", default=None)
_tenant: ContextVar[str | None] = ContextVar("log_tenant", default=None)


def request_id_accept(value: str | None) -> str:
    """The client's request id if it is 1..128 printable ASCII characters, else a new one.

    Anything else (control characters, non-ASCII, a megabyte) would end up verbatim in every log
    line and in the jobs' arguments.
    """
    if (
        value
        and len(value) <= MAX_REQUEST_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and value.strip() == value
    ):
        return value
    return uuid.uuid4().hex


@contextmanager
def log_context(*, request_id: str | None, tenant: str | None = None) -> Iterator[None]:
    """Log lines written inside carry ``request_id`` and ``tenant`` (until ``tenant_set``)."""
    request_token = _request_id.set(request_id)
    tenant_token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(tenant_token)
        _request_id.reset(request_token)


def tenant_set(tenant: str) -> None:
    """Name the tenant of the current request (authentication knows it); ``log_context`` undoes
    it when the request ends."""
    _tenant.set(tenant)


def current_request_id() -> str | None:
    return _request_id.get()


def current_tenant() -> str | None:
    return _tenant.get()


def job_args() -> dict[str, str]:
    """Extra arguments for a job deferred now: the current request id, if there is one."""
    request_id = _request_id.get()
    return {JOB_REQUEST_ID_ARG: request_id} if request_id else {}


def _job_request_id(context: Any) -> str | None:
    # The worker calls the task with job.task_kwargs when the middlewares are done, so taking the
    # argument out of that dict here keeps it from the task function.
    value = context.job.task_kwargs.pop(JOB_REQUEST_ID_ARG, None)
    return value if isinstance(value, str) else None


def job_log_context(call_next: Callable[[], Any], context: Any, worker: Any) -> Any:
    """Procrastinate task middleware (sync tasks): the job runs in its request's log context."""
    with log_context(request_id=_job_request_id(context)):
        return call_next()


async def job_log_context_async(
    call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any
) -> Any:
    """The same for async tasks."""
    with log_context(request_id=_job_request_id(context)):
        return await call_next()
