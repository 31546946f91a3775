"""Admin bases shared by every app: rows the system writes are shown, never edited or deleted by
hand; long lists are never counted whole; tenants are filtered by prefix."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin
from django.contrib.auth import get_permission_codename
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

# A changelist counts its rows for the paginator, and on a table of millions (threads, entries,
# chunks, jobs) that count is the slow part of the page: counting stops past this many rows.
LIST_COUNT_LIMIT = 10_000


class BoundedCountPaginator(Paginator):
    """Counts at most ``LIST_COUNT_LIMIT + 1`` rows (``count(*)`` over a ``LIMIT`` subquery): a
    long list then shows that many rows and pages on through them, without a full count."""

    @cached_property
    def count(self) -> int:
        rows = cast(QuerySet[Any], self.object_list)  # the admin pages querysets
        return rows[: LIST_COUNT_LIMIT + 1].count()


class ReadOnlyAdmin(admin.ModelAdmin):
    """A changelist and detail page with no add, change or delete; writes go through services."""

    paginator = BoundedCountPaginator

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A delete here would bypass the services (versions, indexing, runtime rules).
        return False


class OperateAdmin(admin.ModelAdmin):
    """Actions that change what the services own (stop a thread, clear a conversation, revoke a
    key, reindex a document) take ``permissions=["operate"]``: the model's change permission,
    which read-only pages never use for a form. Staff who may only view see no such action."""

    def has_operate_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")


class HiddenByDefaultFilter(admin.SimpleListFilter):
    """Rows a list leaves out unless asked for (runtime documents, periodic jobs): "hidden
    (default)", "only <them>" or "all". A subclass names them (``only_label``) and says which
    rows they are (``only`` and ``without``)."""

    ONLY = "only"
    ALL = "all"
    only_label = "only"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(self.ONLY, self.only_label), (self.ALL, "all")]

    def choices(self, changelist: Any) -> Any:
        value = self.value()
        yield {
            "selected": value not in (self.ONLY, self.ALL),
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "hidden (default)",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == self.ALL:
            return queryset
        return self.only(queryset) if value == self.ONLY else self.without(queryset)

    def only(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        raise NotImplementedError

    def without(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        raise NotImplementedError


class ReadOnlyInline(admin.TabularInline):
    """Related rows listed under their parent, linking to their own page."""

    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Above every character a tenant id can hold: "ali" <= user_id < "ali\U0010ffff" is "starts with".
_PREFIX_END = "\U0010ffff"


class TenantPrefixFilter(admin.SimpleListFilter):
    """A text box in the filter sidebar: rows whose tenant id starts with what was typed.

    A range on ``user_id`` rather than ``LIKE 'ali%'``: the tenant indexes serve it under any
    code-point-ordered collation (the embedded database's C.UTF-8), where LIKE would scan. The
    ``startswith`` beside it keeps the answer exact under any other collation. Not part of the
    search box on purpose: OR-ed with its other fields, the index could not be used.
    """

    title = "tenant (user id starts with)"
    parameter_name = "tenant"
    template = "admin/tenant_prefix_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: Any) -> Any:
        yield {
            "value": self.value() or "",
            # The other filters and the search stay applied when a tenant is typed.
            "kept": [
                (name, value)
                for name, value in changelist.params.items()
                if name != self.parameter_name
            ],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # A NUL cannot be in a PostgreSQL text value: dropped rather than a DataError (a 500).
        prefix = (self.value() or "").replace("\x00", "").strip()
        if not prefix:
            return queryset
        return queryset.filter(tenant_prefix_q(prefix))


def tenant_prefix_q(prefix: str) -> Q:
    """Rows whose tenant id starts with ``prefix``, as a range the tenant indexes serve (see
    ``TenantPrefixFilter``)."""
    return Q(user_id__gte=prefix, user_id__lt=prefix + _PREFIX_END, user_id__startswith=prefix)
