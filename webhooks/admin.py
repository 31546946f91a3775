"""Operators' view of webhooks: each tenant's receivers (never their secrets), deliveries with
their attempts, and the actions that go through the services (enable, disable, redeliver)."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import OperateAdmin, ReadOnlyAdmin, ReadOnlyInline, TenantPrefixFilter
from core.admin_display import change_link
from webhooks import services
from webhooks.errors import DeliveryNotFound, DeliveryPending
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery


def _log_each(request: HttpRequest, rows: QuerySet[Any], message: str) -> None:
    """One admin log row per row acted on (one INSERT for them all): its History and the index's
    Recent actions say what an operator did."""
    LogEntry.objects.log_actions(
        user_id=cast(int, request.user.pk),
        queryset=rows,
        action_flag=CHANGE,
        change_message=message,
        single_object=False,
    )


@admin.register(Webhook)
class WebhookAdmin(OperateAdmin, ReadOnlyAdmin):
    list_display = (
        "url",
        "user_id",
        "events",
        "enabled",
        "consecutive_failures",
        "paused_until",
        "disabled_reason",
        "created_at",
    )
    list_filter = ("enabled", TenantPrefixFilter)
    search_fields = ("url",)
    search_help_text = "Part of the URL (tenants: the filter)."
    ordering = ("user_id", "-created_at")
    list_per_page = 50
    # Never the secret: it signs the tenant's deliveries, and an operator has no use for it.
    fields = (
        "id",
        "user_id",
        "url",
        "events",
        "description",
        "enabled",
        "disabled_reason",
        "consecutive_failures",
        "failing_attempts",
        "paused_until",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("enable", "disable")

    @admin.action(
        description="Enable the selected webhooks (resets failures)", permissions=["operate"]
    )
    def enable(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(description="Disable the selected webhooks", permissions=["operate"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        self._set_enabled(request, queryset, enabled=False)

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[Webhook], *, enabled: bool
    ) -> None:
        rows = list(queryset.values_list("user_id", "pk"))
        for user_id, webhook_id in rows:
            services.webhook_update(user_id=user_id, webhook_id=webhook_id, enabled=enabled)
        verb = "Enabled" if enabled else "Disabled"
        _log_each(request, Webhook.objects.filter(pk__in=[pk for _, pk in rows]), verb)
        self.message_user(request, f"{verb} {len(rows)} webhook(s).", messages.SUCCESS)


class AttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fk_name = "delivery"
    show_change_link = False
    fields = (
        "number",
        "started_at",
        "duration_ms",
        "result",
        "status_code",
        "error",
        "response_excerpt",
    )
    readonly_fields = fields
    ordering = ("number",)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(OperateAdmin, ReadOnlyAdmin):
    list_display = (
        "id",
        "user_id",
        "event_type",
        "state",
        "attempts",
        "last_status_code",
        "webhook_url",
        "created_at",
        "finished_at",
    )
    list_select_related = ("webhook",)
    list_filter = ("state", "event_type", TenantPrefixFilter)
    search_fields = ("=id",)
    search_help_text = "A delivery id (the webhook-id header)."
    # Every tenant's every event: never counted whole.
    show_full_result_count = False
    list_per_page = 50
    ordering = ("-created_at",)
    fields = (
        "id",
        "user_id",
        "webhook_link",
        "event_type",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "retries_from",
        "created_at",
        "delivered_at",
        "finished_at",
        "payload",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)
    actions = ("redeliver",)

    @admin.display(description="webhook")
    def webhook_url(self, delivery: WebhookDelivery) -> str:
        return delivery.webhook.url

    @admin.display(description="webhook")
    def webhook_link(self, delivery: WebhookDelivery) -> str:
        return change_link(
            "admin:webhooks_webhook_change", delivery.webhook_id, delivery.webhook.url
        )

    @admin.action(description="Redeliver the selected deliveries", permissions=["operate"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        pending = 0
        queued: list[Any] = []
        for user_id, delivery_id in queryset.values_list("user_id", "pk"):
            try:
                services.webhook_delivery_redeliver(user_id=user_id, delivery_id=delivery_id)
            except DeliveryPending:
                pending += 1
            except DeliveryNotFound:
                continue
            else:
                queued.append(delivery_id)
        _log_each(request, WebhookDelivery.objects.filter(pk__in=queued), "Redeliver")
        self.message_user(
            request, f"Redelivering {len(queued)} delivery(ies) now.", messages.SUCCESS
        )
        if pending:
            self.message_user(
                request,
                f"{pending} already pending (their next attempt is scheduled): left as they are.",
                messages.WARNING,
            )
