"""Database plumbing shared by every app: bounded transactions, row locks, constraint names.

Each service opens one short transaction; a row lock it waits for is bounded so a request gets a
409 instead of a stall. The bound is transaction-scoped (``SET LOCAL`` semantics), so a pooled or
PgBouncer connection never carries it into the next request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self, TypeVar

import psycopg.errors
from django.db import IntegrityError, OperationalError, connection, models, transaction

from ironclaw_site.errors import Conflict


@contextmanager
def bounded_transaction(*, lock_timeout_ms: int, busy: type[Conflict]) -> Iterator[None]:
    """One transaction whose every lock wait is bounded by ``lock_timeout_ms``; a wait past it
    raises ``busy`` (the conflict naming the row the caller waited for)."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{lock_timeout_ms}ms"]
                )
            yield
    except OperationalError as error:
        if isinstance(error.__cause__, psycopg.errors.LockNotAvailable):
            raise busy() from None
        raise


def violated_constraint(error: IntegrityError) -> str | None:
    """The name of the constraint an ``IntegrityError`` violated, when PostgreSQL reports one."""
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


_Row = TypeVar("_Row", bound=models.Model)


class RowLockQuerySet(models.QuerySet[_Row]):
    def for_update(self, *, skip_locked: bool = False) -> Self:
        """Lock the selected rows ``FOR NO KEY UPDATE`` until the transaction ends.

        NO KEY UPDATE, not plain FOR UPDATE: it serialises writers of the row but lets other
        transactions insert rows that reference it (their foreign-key check takes KEY SHARE,
        which FOR UPDATE would block). ``of=("self",)`` keeps a join from locking other tables.
        """
        return self.select_for_update(no_key=True, skip_locked=skip_locked, of=("self",))
