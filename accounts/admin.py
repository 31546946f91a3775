from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import ApiKey, IdempotencyKey
from accounts.services import api_key_revoke
from core.admin import OperateAdmin, TenantPrefixFilter


@admin.register(ApiKey)
class ApiKeyAdmin(OperateAdmin):
    list_display = (
        "name",
        "user_id",
        "is_service",
        "prefix",
        "created_at",
        "last_used",
        "revoked_at",
    )
    list_filter = ("is_service", ("revoked_at", admin.EmptyFieldListFilter), TenantPrefixFilter)
    search_fields = ("name", "prefix")
    show_full_result_count = False
    # last_used_at is written by authentication, to the minute (api_key_mark_used).
    readonly_fields = (
        "prefix",
        "user_id",
        "is_service",
        "created_at",
        "last_used",
        "revoked_at",
    )
    fields = ("name", "user_id", "is_service", "prefix", "created_at", "last_used", "revoked_at")
    ordering = ("-created_at",)
    actions = ("revoke_keys",)

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, api_key: ApiKey) -> datetime.datetime | str:
        return api_key.last_used_at or "never"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key's plain text is shown exactly once, by `manage.py create_api_key`.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a key would erase who used it; revoking (the action) keeps the row.
        return False

    @admin.action(description="Revoke selected API keys", permissions=["operate"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True).order_by("pk"):
            api_key_revoke(api_key_id=api_key.pk)
            self.log_change(request, api_key, "Revoke: revoked")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API keys.", messages.SUCCESS)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    """Read-only: the rows are the API's record of what it answered; the hourly job prunes them."""

    list_display = ("key", "api_key", "user_id", "response_status", "created_at")
    list_filter = ("response_status", TenantPrefixFilter)
    search_fields = ("=key",)
    list_select_related = ("api_key",)
    show_full_result_count = False
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
