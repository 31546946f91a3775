"""What Citus needs of a statement and of the schema, read with PostgreSQL's own parser (pglast).

Citus distributes the tenant tables by ``user_id`` (co-located), so a statement runs on one shard
only when every tenant table it touches is pinned to one tenant: ``user_id = <value>`` on it, or
an equi-join on ``user_id`` to a table that is pinned (in the same query, a join condition, or a
correlated outer query). INSERTs name ``user_id`` among their columns. Unique indexes (primary
keys included) and foreign keys between tenant tables must contain ``user_id``: Citus can enforce
a unique index only per shard, and a foreign key only inside one.

``statement_problems`` checks one statement; ``schema_problems`` the catalog of a database.
docs/citus.md says what each rule is for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType

TENANT_COLUMN = "user_id"

# Django's placeholders (client-side binding) and an escaped percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def with_numbered_parameters(sql: str) -> str:
    """Django's ``%s`` / ``%(name)s`` placeholders as PostgreSQL's ``$n``, for the parser."""
    numbers: dict[str, int] = {}
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name is not None and name in numbers:
            return f"${numbers[name]}"
        count += 1
        if name is not None:
            numbers[name] = count
        return f"${count}"

    return _PLACEHOLDER.sub(replace, sql)


@dataclass
class _Scope:
    """The relations one query level reads (alias -> table, None for a subquery or a CTE)."""

    relations: dict[str, str | None] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)


def _conjuncts(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        for argument in node.args or ():
            yield from _conjuncts(argument)
    elif node is not None:
        yield node


def _is_value(node: Any) -> bool:
    if isinstance(node, ast.TypeCast):
        return _is_value(node.arg)
    return isinstance(node, ast.ParamRef | ast.A_Const)


def _tenant_column_alias(
    node: Any, scopes: Sequence[_Scope], tenant_tables: frozenset[str]
) -> tuple[int, str] | None:
    """``(scope depth, alias)`` of the relation whose ``user_id`` this column reference is."""
    if isinstance(node, ast.TypeCast):
        return _tenant_column_alias(node.arg, scopes, tenant_tables)
    if not isinstance(node, ast.ColumnRef):
        return None
    names = [getattr(part, "sval", None) for part in node.fields or ()]
    if not names or names[-1] != TENANT_COLUMN:
        return None
    for depth in range(len(scopes) - 1, -1, -1):
        relations = scopes[depth].relations
        if len(names) >= 2:
            if names[-2] in relations:
                return depth, names[-2]
        else:
            tenants = [alias for alias, table in relations.items() if table in tenant_tables]
            if len(tenants) == 1:
                return depth, tenants[0]
            if len(relations) == 1:
                return depth, next(iter(relations))
    return None


def _equalities(node: Any) -> Iterator[tuple[Any, Any]]:
    if not isinstance(node, ast.A_Expr):
        return
    operator = [getattr(part, "sval", None) for part in node.name or ()]
    if operator != ["="]:
        return
    if node.kind == A_Expr_Kind.AEXPR_OP:
        yield node.lexpr, node.rexpr
    elif node.kind == A_Expr_Kind.AEXPR_IN:
        # Django writes user_id__in=[one] as IN (%s): one value is an equality.
        values: Any = node.rexpr
        if len(values) == 1:
            yield node.lexpr, values[0]


def _pin(scopes: list[_Scope], conditions: list[Any], tenant_tables: frozenset[str]) -> None:
    """Mark the current scope's relations pinned to one tenant by ``conditions`` (conjuncts)."""
    current = scopes[-1]
    links: list[tuple[tuple[int, str], tuple[int, str]]] = []
    for condition in conditions:
        for left, right in _equalities(condition):
            left_alias = _tenant_column_alias(left, scopes, tenant_tables)
            right_alias = _tenant_column_alias(right, scopes, tenant_tables)
            if left_alias and right_alias:
                links.append((left_alias, right_alias))
            elif left_alias and _is_value(right) and left_alias[0] == len(scopes) - 1:
                current.pinned.add(left_alias[1])
            elif right_alias and _is_value(left) and right_alias[0] == len(scopes) - 1:
                current.pinned.add(right_alias[1])
    changed = True
    while changed:
        changed = False
        for first, second in links:
            for this, other in ((first, second), (second, first)):
                if this[0] != len(scopes) - 1 or this[1] in current.pinned:
                    continue
                if other[1] in scopes[other[0]].pinned:
                    current.pinned.add(this[1])
                    changed = True


def _child_queries(node: Any) -> Iterator[Any]:
    """The queries nested in ``node`` (sublinks, FROM subqueries), not descending into them."""
    if isinstance(node, tuple | list):
        for item in node:
            yield from _child_queries(item)
        return
    if not isinstance(node, ast.Node):
        return
    for name in node:
        value = getattr(node, name)
        if isinstance(value, ast.SelectStmt):
            yield value
        else:
            yield from _child_queries(value)


class _Checker:
    def __init__(self, tenant_tables: frozenset[str]) -> None:
        self.tenant_tables = tenant_tables
        self.problems: list[str] = []

    def _from_item(
        self, node: Any, scope: _Scope, conditions: list[Any], ctes: frozenset[str]
    ) -> None:
        if isinstance(node, ast.RangeVar):
            alias = str(node.alias.aliasname if node.alias else node.relname)
            scope.relations[alias] = None if node.relname in ctes else node.relname
        elif isinstance(node, ast.JoinExpr):
            self._from_item(node.larg, scope, conditions, ctes)
            self._from_item(node.rarg, scope, conditions, ctes)
            conditions.extend(_conjuncts(node.quals))
        elif isinstance(node, ast.RangeSubselect) and node.alias:
            scope.relations[str(node.alias.aliasname)] = None

    def _level(
        self,
        *,
        statement: Any,
        relations: Sequence[Any],
        where: Any,
        outer: list[_Scope],
        ctes: frozenset[str],
        skip: frozenset[str] = frozenset(),
    ) -> None:
        """One query level: pin its relations, report the unpinned tenant tables, then check
        its nested queries with this level as their outer scope."""
        scope = _Scope()
        conditions: list[Any] = list(_conjuncts(where))
        for item in relations:
            self._from_item(item, scope, conditions, ctes)
        scopes = [*outer, scope]
        _pin(scopes, conditions, self.tenant_tables)
        for alias, table in scope.relations.items():
            if table in self.tenant_tables and alias not in scope.pinned:
                self.problems.append(f"{table} (as {alias}) is not pinned by {TENANT_COLUMN}")
        for name in statement:
            if name not in skip:
                for child in _child_queries(getattr(statement, name)):
                    self.select(child, scopes, ctes)

    def _with(self, clause: Any, outer: list[_Scope], ctes: frozenset[str]) -> frozenset[str]:
        if clause is None:
            return ctes
        names = ctes | {cte.ctename for cte in clause.ctes}
        for cte in clause.ctes:
            self.statement(cte.ctequery, outer, names)
        return names

    def select(self, node: Any, outer: list[_Scope], ctes: frozenset[str]) -> None:
        ctes = self._with(node.withClause, outer, ctes)
        if node.larg is not None or node.rarg is not None:
            for branch in (node.larg, node.rarg):
                if branch is not None:
                    self.select(branch, outer, ctes)
            return
        self._level(
            statement=node,
            relations=node.fromClause or (),
            where=node.whereClause,
            outer=outer,
            ctes=ctes,
            skip=frozenset({"withClause", "larg", "rarg"}),
        )

    def statement(self, node: Any, outer: list[_Scope], ctes: frozenset[str] = frozenset()) -> None:
        if isinstance(node, ast.SelectStmt):
            self.select(node, outer, ctes)
        elif isinstance(node, ast.InsertStmt):
            ctes = self._with(node.withClause, outer, ctes)
            relation: Any = node.relation
            table = relation.relname
            columns = {target.name for target in node.cols or ()}
            if table in self.tenant_tables and TENANT_COLUMN not in columns:
                self.problems.append(f"INSERT INTO {table} does not name {TENANT_COLUMN}")
            if node.selectStmt is not None:
                self.select(node.selectStmt, outer, ctes)
        elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            ctes = self._with(node.withClause, outer, ctes)
            others = node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause
            self._level(
                statement=node,
                relations=[node.relation, *(others or ())],
                where=node.whereClause,
                outer=outer,
                ctes=ctes,
                skip=frozenset({"withClause", "relation"}),
            )
        elif isinstance(node, ast.ExplainStmt | ast.DeclareCursorStmt):
            self.statement(node.query, outer, ctes)
        else:
            touched = sorted(
                {ref.relname for ref in _range_vars(node) if ref.relname in self.tenant_tables}
            )
            if touched:
                kind = type(node).__name__
                self.problems.append(f"{kind} on tenant table {', '.join(touched)}")


def _range_vars(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _range_vars(item)
    elif isinstance(node, ast.RangeVar):
        yield node
    elif isinstance(node, ast.Node):
        for name in node:
            yield from _range_vars(getattr(node, name))


def statement_problems(sql: str, tenant_tables: frozenset[str]) -> list[str]:
    """Why ``sql`` (one or more statements, with Django's or PostgreSQL's placeholders) would not
    run on a single Citus shard: one line per tenant table reference not pinned to a tenant."""
    checker = _Checker(tenant_tables)
    for raw in parse_sql(with_numbered_parameters(sql)):
        checker.statement(raw.stmt, [])
    return checker.problems


@dataclass(frozen=True)
class SchemaProblem:
    table: str
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.table}: {self.name} {self.problem}"


# Unique indexes (primary keys included) of tenant tables, and the foreign keys between them,
# read from pg_catalog. A foreign key from a tenant table to a reference table is what Citus
# allows (the reference table is on every node); one into a tenant table from elsewhere is not.
_SCHEMA_SQL = """
SELECT rel.relname, idx.relname, 'unique index',
       array(SELECT attname FROM pg_attribute
             WHERE attrelid = rel.oid AND attnum = ANY(i.indkey)),
       NULL
FROM pg_index i
JOIN pg_class idx ON idx.oid = i.indexrelid
JOIN pg_class rel ON rel.oid = i.indrelid
JOIN pg_namespace ns ON ns.oid = rel.relnamespace
WHERE i.indisunique AND ns.nspname = current_schema() AND rel.relname = ANY(%(tables)s)
UNION ALL
SELECT rel.relname, c.conname, 'foreign key',
       array(SELECT attname FROM pg_attribute
             WHERE attrelid = c.conrelid AND attnum = ANY(c.conkey)),
       target.relname
FROM pg_constraint c
JOIN pg_class rel ON rel.oid = c.conrelid
JOIN pg_class target ON target.oid = c.confrelid
JOIN pg_namespace ns ON ns.oid = rel.relnamespace
WHERE c.contype = 'f' AND ns.nspname = current_schema()
  AND (rel.relname = ANY(%(tables)s) OR target.relname = ANY(%(tables)s))
ORDER BY 1, 2
"""


def schema_problems(cursor: Any, tenant_tables: frozenset[str]) -> list[SchemaProblem]:
    """The unique indexes and foreign keys Citus would refuse on the tenant tables."""
    cursor.execute(_SCHEMA_SQL, {"tables": sorted(tenant_tables)})
    problems = []
    for table, name, kind, columns, target in cursor.fetchall():
        if kind == "unique index" and TENANT_COLUMN not in columns:
            problems.append(SchemaProblem(table, name, f"(unique on {', '.join(columns)})"))
        elif kind == "foreign key":
            if table not in tenant_tables:
                problems.append(SchemaProblem(table, name, f"(references tenant table {target})"))
            elif target in tenant_tables and TENANT_COLUMN not in columns:
                problems.append(
                    SchemaProblem(table, name, f"(foreign key on {', '.join(columns)})")
                )
    return problems
