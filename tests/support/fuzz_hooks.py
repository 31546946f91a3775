"""Schemathesis hooks for the API fuzz runs (loaded through ``SCHEMATHESIS_HOOKS``).

A query parameter repeated thousands of times makes a request longer than the front server reads
(``WEB_MAX_HEADER_BYTES``), which it refuses with a 431 before the app sees it; those refusals
are the front's, so a case keeps at most ``MAX_REPEATED_QUERY_VALUES`` of them and the run
tests the app.

Two operations long-poll for up to 30 s when asked to (``threads/next`` and a conversation's
``entries``). Generated cases ask for it often (30 is the boundary value the coverage phase
tries first), which would spend the run waiting instead of testing; a case keeps its
``wait_seconds`` but never more than ``MAX_FUZZ_WAIT_SECONDS``. Values that are not numbers are
left alone: refusing them is what the server is being tested for.
"""

from __future__ import annotations

import math
from typing import Any

import schemathesis

MAX_FUZZ_WAIT_SECONDS = 0.2
MAX_REPEATED_QUERY_VALUES = 4


def _capped(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    try:
        seconds = float(value)
    except ValueError:
        return value
    if math.isnan(seconds) or seconds <= MAX_FUZZ_WAIT_SECONDS:
        return value
    return MAX_FUZZ_WAIT_SECONDS


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    if isinstance(case.query, dict):
        for name, value in case.query.items():
            if isinstance(value, list):
                case.query[name] = value[:MAX_REPEATED_QUERY_VALUES]
    for container in (case.query, case.body):
        if isinstance(container, dict) and "wait_seconds" in container:
            container["wait_seconds"] = _capped(container["wait_seconds"])
