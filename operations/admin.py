"""Procrastinate's job admin, fit for a busy queue: one line per job, periodic jobs out of the way.

The stock list drew a multi-line summary and pretty-printed arguments per row (about 120 px a
row), marked statuses with emoji (empty boxes without an emoji font) and filled with the
periodic maintenance jobs, which run every minute. Here a row is one line of text columns,
periodic jobs are hidden unless asked for, and no filter reads the whole table for its choices.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseRedirect
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from procrastinate.contrib.django import app
from procrastinate.contrib.django.admin import ProcrastinateJobAdmin
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob

from core.admin import BoundedCountPaginator, HiddenByDefaultFilter
from core.admin_display import change_link, truncated

# Arguments that name a row the admin shows: their value links to its page.
ARGUMENT_PAGES = {
    "thread_id": "admin:conversations_thread_change",
    "document_id": "admin:workspace_document_change",
}
ARGUMENT_VALUE_SHOWN = 40


def periodic_task_names() -> list[str]:
    """The tasks Procrastinate's periodic deferrer runs (``@app.periodic``): their jobs are the
    periodic ones. By task rather than by ``procrastinate_periodic_defers``, which keeps only
    each task's latest deferral."""
    return sorted(
        {periodic.task.name for periodic in app.periodic_registry.periodic_tasks.values()}
    )


class PeriodicJobsFilter(HiddenByDefaultFilter):
    """Periodic jobs (every minute, some of them) hidden unless asked for."""

    title = "periodic jobs"
    parameter_name = "periodic"
    only_label = "only periodic"

    def only(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(task_name__in=periodic_task_names())

    def without(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.exclude(task_name__in=periodic_task_names())


class _RegisteredChoiceFilter(admin.SimpleListFilter):
    """A filter on a job column whose choices are what the code declares, where the stock
    filter read every distinct value of the whole table on each page view. The parameter keeps
    the stock filter's name, so links such as the dashboard's still filter."""

    field: str

    def values(self) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in self.values()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


def _project_tasks() -> dict[str, Any]:
    # Without Procrastinate's own builtin tasks (listed under two names each), which the project
    # does not defer: its job pruning is a task of its own.
    return {
        name: task
        for name, task in app.tasks.items()
        if not name.startswith(("builtin:", "procrastinate."))
    }


class QueueFilter(_RegisteredChoiceFilter):
    title = "queue"
    parameter_name = "queue_name__exact"
    field = "queue_name"

    def values(self) -> list[str]:
        return sorted({task.queue for task in _project_tasks().values()})


class TaskFilter(_RegisteredChoiceFilter):
    title = "task"
    parameter_name = "task_name__exact"
    field = "task_name"

    def values(self) -> list[str]:
        return sorted(_project_tasks())


def _event_at(event_type: str, *, latest: bool) -> Subquery:
    # Through the events' job_id index: a job has a handful of events.
    events = ProcrastinateEvent.objects.filter(job=OuterRef("pk"), type=event_type)
    return Subquery(events.order_by("-at" if latest else "at").values("at")[:1])


class JobChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # Evaluated for the page's rows only (PostgreSQL computes a subquery in the select list
        # after the sort and LIMIT it takes no part in).
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .annotate(
                runnable_at=Coalesce("scheduled_at", _event_at("deferred", latest=False)),
                started_at=_event_at("started", latest=True),
            )
        )


class OperatorsJobAdmin(ProcrastinateJobAdmin):
    """Procrastinate's job admin, one line per job, periodic jobs hidden by default."""

    list_display = [
        "pk",
        "short_task_name",
        "queue",
        "pretty_status",
        "tries",
        "moment",
        "compact_args",
    ]
    # Lock and queueing lock are not filters (one line per value, so one per job ever run): a
    # link can still filter by them (``?queueing_lock=...``).
    list_filter = [
        PeriodicJobsFilter,
        "status",
        QueueFilter,
        TaskFilter,
        "scheduled_at",
    ]
    show_full_result_count = False
    paginator = BoundedCountPaginator

    class Media:
        css = {"all": ("operations/job_list.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProcrastinateJob]:
        # Without the stock admin's prefetch of every listed job's events (for its summary).
        return admin.ModelAdmin.get_queryset(self, request)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # The status column is a PostgreSQL enum: an unknown value in the URL would be a
        # DataError (a 500), where Django answers a bad filter by redirecting with ?e=1.
        known = {value for value, _ in ProcrastinateJob._meta.get_field("status").choices or ()}
        for name in ("status", "status__exact"):
            if name in request.GET and request.GET[name] not in known:
                return HttpResponseRedirect(f"{request.path}?e=1")
        return super().changelist_view(request, extra_context)

    # Short headers, so the arguments keep room on a laptop's screen.
    @admin.display(description="task", ordering="task_name")
    def short_task_name(self, job: ProcrastinateJob) -> str:
        return super().short_task_name(job)

    @admin.display(description="queue", ordering="queue_name")
    def queue(self, job: ProcrastinateJob) -> str:
        return job.queue_name

    @admin.display(description="tries", ordering="attempts")
    def tries(self, job: ProcrastinateJob) -> int:
        return job.attempts

    @admin.display(description="status", ordering="status")
    def pretty_status(self, job: ProcrastinateJob) -> str:
        # Words with a colour (operations/job_list.css), not emoji: without an emoji font those
        # were empty boxes.
        return format_html('<span class="job-status job-{}">{}</span>', job.status, job.status)

    @admin.display(description="due / started")
    def moment(self, job: ProcrastinateJob) -> SafeString:
        """A waiting job's due time (its schedule, else when it was deferred); any other job's
        latest start (a retried job starts again). The status says which. To the minute (today's
        without their date), the whole moment in the tooltip."""
        started = getattr(job, "started_at", None)
        if job.status == "todo" or started is None:
            started = getattr(job, "runnable_at", None)
        if started is None:
            return mark_safe("-")
        local = timezone.localtime(started)
        # Today's times without the date, which leaves the arguments room on a laptop's screen.
        today = local.date() == timezone.localdate()
        return format_html(
            '<span title="{}">{}</span>',
            formats.localize(local),
            formats.time_format(local, "H:i")
            if today
            else formats.date_format(local, "SHORT_DATETIME_FORMAT"),
        )

    @admin.display(description="args")
    def compact_args(self, job: ProcrastinateJob) -> SafeString:
        """One line: ``name=value`` pairs, long values cut, a thread's or document's id linked
        to its page; the whole JSON in the tooltip."""
        args = job.args if isinstance(job.args, dict) else {"args": job.args}
        pairs = format_html_join(
            " ", "{}={}", ((name, _argument_value(name, value)) for name, value in args.items())
        )
        return format_html(
            '<span class="job-args" title="{}">{}</span>',
            json.dumps(job.args, ensure_ascii=False),
            pairs,
        )


def _argument_value(name: str, value: Any) -> SafeString | str:
    url_name = ARGUMENT_PAGES.get(name)
    if url_name and isinstance(value, str) and _is_uuid(value):
        return change_link(url_name, value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return truncated(text, ARGUMENT_VALUE_SHOWN)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


admin.site.unregister(ProcrastinateJob)
admin.site.register(ProcrastinateJob, OperatorsJobAdmin)
