"""Errors of the routines app; the API's exception handler maps each to its status."""

from __future__ import annotations

from core.errors import Busy, NotFound


class RoutineNotFound(NotFound):
    code = "routine_not_found"
    default_message = "No such routine."


class RoutineBusy(Busy):
    code = "routine_busy"
    default_message = "The routine is being fired (its row lock was not granted in time); retry."
