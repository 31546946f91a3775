"""Database plumbing shared by every app: bounded transactions, row locks, constraint names.

Each service opens one short transaction; a row lock it waits for is bounded so a request gets a
409 instead of a stall. The bound is transaction-scoped (``SET LOCAL`` semantics), so a pooled or
PgBouncer connection never carries it into the next request. A hot path sets it inside its first
statement (``lock_timeout_bound``) instead of spending a round trip on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Self, TypeVar, cast

import psycopg.errors
from django.db import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    connection,
    models,
    transaction,
)
from django.db.models.expressions import RawSQL
from django.db.models.sql import UpdateQuery

from core.errors import Conflict

_SET_LOCK_TIMEOUT = "set_config('lock_timeout', %s, true)"
# lock_timeout_bound's filter, for SQL written by hand (FixedSelect); its one parameter is
# lock_timeout_value(ms).
LOCK_TIMEOUT_BOUND_SQL = f"(SELECT {_SET_LOCK_TIMEOUT}) IS NOT NULL"


def lock_timeout_value(lock_timeout_ms: int) -> str:
    return f"{lock_timeout_ms}ms"


def lock_timeout_bound(lock_timeout_ms: int) -> RawSQL:
    """A filter that bounds the lock waits of the statement it is added to, and of the rest of
    its transaction, by ``lock_timeout_ms``: the same effect as ``SET LOCAL lock_timeout``
    without a round trip of its own.

    The uncorrelated subquery becomes a one-time filter that PostgreSQL evaluates before the
    statement reads its first row, so before it can wait for any row lock, and even when it
    matches no row.
    """
    return RawSQL(
        LOCK_TIMEOUT_BOUND_SQL,
        [lock_timeout_value(lock_timeout_ms)],
        output_field=models.BooleanField(),
    )


@contextmanager
def lock_waits_bounded(*, busy: type[Conflict]) -> Iterator[None]:
    """Turn a lock wait that ran past its bound into ``busy`` (a 409 naming the row)."""
    try:
        yield
    except OperationalError as error:
        if isinstance(error.__cause__, psycopg.errors.LockNotAvailable):
            raise busy() from None
        raise


@contextmanager
def bounded_transaction(
    *, lock_timeout_ms: int, busy: type[Conflict], bound_by_first_statement: bool = False
) -> Iterator[None]:
    """One transaction whose every lock wait is bounded by ``lock_timeout_ms``; a wait past it
    raises ``busy`` (the conflict naming the row the caller waited for).

    ``bound_by_first_statement``: the caller's first statement carries ``lock_timeout_bound``
    (checked: a first statement without it raises), which saves the bound's own round trip.
    """
    with lock_waits_bounded(busy=busy), transaction.atomic():
        if not bound_by_first_statement:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {_SET_LOCK_TIMEOUT}", [lock_timeout_value(lock_timeout_ms)])
            yield
            return
        with connection.execute_wrapper(_FirstStatementBound()):
            yield


class _FirstStatementBound:
    """Refuses a transaction's first statement if it does not set the lock timeout: a lock wait
    before the bound would be unbounded."""

    def __init__(self) -> None:
        self.checked = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not self.checked:
            self.checked = True
            if _SET_LOCK_TIMEOUT not in sql:
                raise RuntimeError("The first statement of this transaction must set its bound.")
        return execute(sql, params, many, context)


def update_returning(queryset: models.QuerySet[_Row], **values: Any) -> list[_Row]:
    """``queryset.update(**values)`` returning the updated rows (``UPDATE ... RETURNING``), so a
    compare-and-set and the read of what it wrote are one statement."""
    query = cast(UpdateQuery, queryset.query.chain(UpdateQuery))
    query.add_update_values(values)
    query.clear_select_clause()
    compiler = query.get_compiler(queryset.db)
    # Rewrites filters on related rows as "pk IN (subquery)", as QuerySet.update() does.
    compiler.pre_sql_setup()
    update_sql, params = compiler.as_sql()
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    # raw() applies each field's converters (jsonb, decimals) as a normal query would.
    with transaction.mark_for_rollback_on_error(using=queryset.db):
        return list(
            queryset.model._default_manager.raw(f"{update_sql} RETURNING {table}.*", params)
        )


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


class ModelRows(Generic[_Row]):
    """Model instances from rows of SQL written by hand: every concrete column, in the order
    ``columns()`` lists them, converted as the ORM would (``from_db_value``). Columns a row has
    after the model's are the caller's to read."""

    def __init__(self, model: type[_Row]) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.table = connection.ops.quote_name(model._meta.db_table)
        self._columns = [connection.ops.quote_name(field.column) for field in fields]
        self.attnames = [field.attname for field in fields]
        self.converters = [
            (index, field.from_db_value)
            for index, field in enumerate(fields)
            if hasattr(field, "from_db_value")
        ]

    def columns(self, alias: str | None = None) -> str:
        prefix = f"{alias or self.table}."
        return ", ".join(prefix + column for column in self._columns)

    def instance(self, row: Sequence[Any]) -> _Row:
        values = list(row[: len(self.attnames)])
        for index, convert in self.converters:
            values[index] = convert(values[index], None, connection)
        return self.model.from_db(connection.alias, self.attnames, values)


class FixedSelect(Generic[_Row]):
    """A SELECT of one model's rows whose SQL is written once, for the hottest reads.

    The ORM builds and compiles a query on every call: about 0.4 ms of CPU for a one-row lookup by
    a unique key, four times what the same statement costs this process written once
    (bench/lookups.py). ``where`` and ``tail`` (ORDER BY, LIMIT, a row lock) are SQL with ``%s``
    placeholders. Rows come back as model instances with every field loaded and converted as the
    ORM would. The statement is bound server-side, so a connection prepares it once it has run it
    a few times (``DATABASE_PREPARED_STATEMENTS``) and PostgreSQL no longer parses and plans it.
    """

    def __init__(self, model: type[_Row], where: str, *, tail: str = "") -> None:
        self.rows = ModelRows(model)
        self.sql = f"SELECT {self.rows.columns()} FROM {self.rows.table} WHERE {where} {tail}"
        self.sql = self.sql.rstrip()

    def first(self, params: Sequence[Any]) -> _Row | None:
        with server_bound_cursor() as cursor:
            cursor.execute(self.sql, params)
            row = cursor.fetchone()
        return None if row is None else self.rows.instance(row)

    def all(self, params: Sequence[Any]) -> list[_Row]:
        with server_bound_cursor() as cursor:
            cursor.execute(self.sql, params)
            return [self.rows.instance(row) for row in cursor.fetchall()]


class ModelInsert(Generic[_Row]):
    """An INSERT of one model's row whose SQL is written once, for the hottest inserts.

    ``save(force_insert=True)`` compiles its INSERT anew on every call: for a model of twenty
    columns, most of the CPU the insert costs this process. This one prepares each value as
    the ORM does (``pre_save``: defaults and ``auto_now``; ``get_db_prep_save``: JSON, decimals),
    sends them bound server-side, and marks the instance saved. No ``RETURNING``: the model's
    primary key must be set before (a default such as ``uuid4``), and no column may have a
    database default the ORM would read back. Sends no ``pre_save``/``post_save`` signal.
    """

    def __init__(self, model: type[_Row]) -> None:
        meta = model._meta
        if any(getattr(field, "db_returning", False) for field in meta.concrete_fields):
            raise TypeError(f"{model.__name__} has columns the database fills in")
        self.fields = list(meta.concrete_fields)
        columns = ", ".join(connection.ops.quote_name(field.column) for field in self.fields)
        placeholders = ", ".join(["%s"] * len(self.fields))
        table = connection.ops.quote_name(meta.db_table)
        self.sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"

    def insert(self, instance: _Row) -> None:
        values = [
            field.get_db_prep_save(field.pre_save(instance, True), connection)
            for field in self.fields
        ]
        with transaction.mark_for_rollback_on_error(), server_bound_cursor() as cursor:
            cursor.execute(self.sql, values)
        instance._state.adding = False
        instance._state.db = connection.alias


def fixed_exists(sql: str, params: Sequence[Any]) -> bool:
    """Whether ``SELECT 1 ... LIMIT 1`` SQL written once finds a row (see ``FixedSelect``)."""
    with server_bound_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


def server_bound_cursor() -> Any:
    """A cursor of this thread's connection that binds parameters server-side (see
    ``core.postgresql.base.DatabaseWrapper.server_bound_cursor``): for statements whose values are
    large, such as runtime writes of engine checkpoints, and for the hot statements written once,
    which a connection then prepares."""
    return cast(Any, connection).server_bound_cursor()


class TenantRow(models.Model):
    """A row of a tenant table (``user_id``, the tenant key and future Citus distribution
    column): ``save()`` of an existing row and ``refresh_from_db()`` name the tenant along with
    the primary key, so each is one statement on one shard (docs/citus.md)."""

    user_id: Any

    class Meta:
        abstract = True

    def _do_update(self, base_qs: Any, *args: Any) -> Any:
        return super()._do_update(base_qs.filter(user_id=self.user_id), *args)

    def refresh_from_db(
        self,
        using: str | None = None,
        fields: Any = None,
        from_queryset: models.QuerySet[Any] | None = None,
    ) -> None:
        if from_queryset is None:
            from_queryset = type(self)._base_manager.filter(models.Q(user_id=self.user_id))
        super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)


_Tenant = TypeVar("_Tenant", bound=TenantRow)


class ModelUpdate(Generic[_Tenant]):
    """``save()`` of an existing row of a tenant table, with its UPDATE written once.

    Every column but the primary key is written, as ``save()`` writes them (``pre_save`` for
    ``auto_now``, ``get_db_prep_save``), in one statement that names the tenant with the key
    (see ``TenantRow``). For the hottest saves: compiling the ORM's UPDATE of a wide row cost
    four times what the statement costs this process. No signals are sent.
    """

    def __init__(self, model: type[_Tenant]) -> None:
        meta = model._meta
        if any(getattr(field, "generated", False) for field in meta.concrete_fields):
            raise TypeError(f"{model.__name__} has columns the database computes")
        self.fields = [field for field in meta.concrete_fields if not field.primary_key]
        assignments = ", ".join(
            f"{connection.ops.quote_name(field.column)} = %s" for field in self.fields
        )
        table = connection.ops.quote_name(meta.db_table)
        pk = connection.ops.quote_name(meta.pk.column)
        self.sql = f"UPDATE {table} SET {assignments} WHERE {pk} = %s AND user_id = %s"

    def update(self, instance: _Tenant) -> None:
        """Write ``instance``; ``DatabaseError`` when its row is gone."""
        values = [
            field.get_db_prep_save(field.pre_save(instance, False), connection)
            for field in self.fields
        ]
        with transaction.mark_for_rollback_on_error(), server_bound_cursor() as cursor:
            cursor.execute(self.sql, [*values, instance.pk, instance.user_id])
            if cursor.rowcount != 1:
                raise DatabaseError(f"{type(instance).__name__} {instance.pk} was not updated")
