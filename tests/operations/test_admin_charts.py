"""The dashboard's charts: each bucket's values are right (counts by outcome, percentiles, the
indexing backlog replayed from job events), empty buckets are 0 or gaps, the SVG says what it
shows, a slow database leaves a note instead of a failed page, and the cost is fixed."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conversations.models import Thread, ThreadState
from operations import charts as charts_module
from operations import charts_svg
from operations.chart_data import SPANS, ChartData, Series
from operations.charts import Chart, ChartsBoard, charts
from tests.support.locks import table_locked

pytestmark = pytest.mark.django_db

FIVE_MINUTES = datetime.timedelta(minutes=5)
HOUR = datetime.timedelta(hours=1)
MS = datetime.timedelta(milliseconds=1)


@pytest.fixture(autouse=True)
def _no_earlier_jobs() -> None:
    """Transactional tests leave their jobs behind (Procrastinate's tables are not flushed): the
    backlog counts this test's jobs only (the delete is rolled back with the test)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


def _bucket_starts(step: datetime.timedelta, buckets: int) -> list[datetime.datetime]:
    """The buckets' starts as the charts see them: the database's now() (the test's transaction
    start) rounded down to the step, and the ones before."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
    epoch = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    last = now - (now - epoch) % step
    return [last - step * (buckets - 1 - i) for i in range(buckets)]


def _thread(state: str = ThreadState.COMPLETED, **fields: Any) -> Thread:
    """A thread row written as it is, bypassing the services (and their clock)."""
    created_at = fields.pop("created_at", None)
    thread = Thread.objects.create(user_id="alice", goal="g", tracked=False, state=state, **fields)
    if created_at is not None:
        Thread.objects.filter(pk=thread.pk).update(created_at=created_at)
    return thread


def _finished(
    at: datetime.datetime, *, overhead_ms: float, model_ms: int = 1000, **fields: Any
) -> Thread:
    """A thread that finished at ``at`` after one claim, ``overhead_ms`` beyond its model time."""
    return _thread(
        finished_at=at,
        enqueued_at=at - (overhead_ms + model_ms) * MS,
        started_at=at - model_ms * MS,
        claimed_at=at - model_ms * MS,
        model_time_ms=model_ms,
        **fields,
    )


def _job(queue: str, status: str, events: list[tuple[str, datetime.datetime]]) -> int:
    """A Procrastinate job in ``status`` whose events are ``events`` (type, at), as if it had
    lived them (its insert trigger's own "deferred" event is replaced)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, status) "
            "VALUES (%s, 'workspace.tasks.index_document', %s) RETURNING id",
            [queue, status],
        )
        job_id: int = cursor.fetchone()[0]
        cursor.execute("DELETE FROM procrastinate_events WHERE job_id = %s", [job_id])
        for kind, at in events:
            cursor.execute(
                "INSERT INTO procrastinate_events (job_id, type, at) VALUES (%s, %s, %s)",
                [job_id, kind, at],
            )
    return job_id


def _chart(board: ChartsBoard, key: str) -> ChartData:
    return next(chart.data for chart in board.charts if chart.key == key)


def _values(data: ChartData, name: str) -> list[float | None]:
    return list(next(series for series in data.series if series.name == name).values)


def test_turns_are_counted_by_outcome_in_the_bucket_they_finished_in() -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    for _ in range(2):
        _finished(starts[11], overhead_ms=10)
    _finished(starts[11] + datetime.timedelta(seconds=1), overhead_ms=10, state="failed")
    _finished(starts[10] + datetime.timedelta(minutes=4), overhead_ms=10, state="stopped")
    for _ in range(3):
        _finished(starts[7] + datetime.timedelta(seconds=30), overhead_ms=10)
    # Before the hour, and not finished: neither is counted.
    _finished(starts[0] - datetime.timedelta(seconds=1), overhead_ms=10)
    _thread(state=ThreadState.CREATED)

    board = charts("hour")

    turns = _chart(board, "turns")
    assert turns.starts == tuple(starts)
    zeros = [0.0] * 12
    assert _values(turns, "completed") == [*zeros[:7], 3.0, *zeros[8:11], 2.0]
    assert _values(turns, "failed") == [*zeros[:11], 1.0]
    assert _values(turns, "stopped") == [*zeros[:10], 1.0, 0.0]
    assert _values(turns, "other") == zeros


def test_overhead_percentiles_per_bucket_with_gaps_where_nothing_finished() -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    for milliseconds in (100, 300, 200):
        _finished(starts[9] + datetime.timedelta(minutes=1), overhead_ms=milliseconds)
    # Stopped before any claim: no overhead to speak of.
    _thread(
        state=ThreadState.STOPPED,
        finished_at=starts[9] + datetime.timedelta(minutes=1),
        enqueued_at=starts[0],
    )
    # No enqueued_at (written before the column existed): measured from created_at.
    finished = starts[11] + datetime.timedelta(seconds=2)
    _thread(
        finished_at=finished,
        created_at=finished - 50 * MS,
        started_at=finished - 10 * MS,
        claimed_at=finished - 10 * MS,
    )

    overhead = _chart(charts("hour"), "overhead")

    p50, p95 = _values(overhead, "p50"), _values(overhead, "p95")
    assert p50[:9] == [None] * 9
    assert p50[10] is None
    assert p50[9] == pytest.approx(200)
    assert p95[9] == pytest.approx(290)
    assert p50[11] == pytest.approx(50)
    assert p95[11] == pytest.approx(50)
    assert overhead.counts == (0,) * 9 + (3, 0, 1)


def test_queue_wait_measures_claims_from_runnable_to_claimed() -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    claimed = starts[10] + datetime.timedelta(seconds=30)
    # Claimed once, finished since.
    _thread(
        finished_at=claimed + datetime.timedelta(seconds=10),
        enqueued_at=claimed - 40 * MS,
        started_at=claimed,
        claimed_at=claimed,
    )
    # Claimed once, still running (a live thread, not finished).
    _thread(
        state=ThreadState.RUNNING,
        lease_owner="worker",
        lease_expires_at=claimed + HOUR,
        enqueued_at=claimed - 400 * MS,
        started_at=claimed,
        claimed_at=claimed,
    )
    # Requeued after its first claim, then claimed again: waited from its requeue.
    _thread(
        finished_at=claimed + datetime.timedelta(seconds=10),
        enqueued_at=claimed - 10_000 * MS,
        started_at=starts[2],
        claimed_at=claimed,
    )
    # A paused thread claimed again for a message: it waited for the message, not a worker.
    _thread(
        state=ThreadState.WAITING,
        enqueued_at=starts[5] - 10 * MS,
        started_at=starts[5],
        claimed_at=claimed,
    )
    # Claimed, then requeued (its enqueued_at is newer than the claim): that wait is unknown.
    _thread(state=ThreadState.CREATED, enqueued_at=claimed + 5 * MS, claimed_at=claimed)
    # Claimed before the hour.
    _thread(
        finished_at=starts[0] - datetime.timedelta(minutes=1),
        enqueued_at=starts[0] - datetime.timedelta(minutes=2),
        started_at=starts[0] - datetime.timedelta(minutes=2),
        claimed_at=starts[0] - datetime.timedelta(minutes=2),
    )

    wait = _chart(charts("hour"), "queue-wait")

    assert wait.counts == (0,) * 10 + (3, 0)
    assert _values(wait, "p50")[10] == pytest.approx(400)
    assert _values(wait, "p95")[10] == pytest.approx(400 + 0.9 * 9600)
    assert [value for i, value in enumerate(_values(wait, "p50")) if i != 10] == [None] * 11


def test_indexing_backlog_is_replayed_from_the_queue_events() -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)

    def at(bucket: int, seconds: int) -> datetime.datetime:
        return starts[bucket] + datetime.timedelta(seconds=seconds)

    # Waiting since before the hour, started in the current bucket.
    _job("indexing", "doing", [("deferred", starts[0] - HOUR), ("started", at(11, 0))])
    _job(
        "indexing",
        "succeeded",
        [("deferred", at(8, 60)), ("started", at(9, 60)), ("succeeded", at(9, 90))],
    )
    _job("indexing", "todo", [("deferred", at(9, 120))])
    # Failed once, waiting for its retry.
    _job(
        "indexing",
        "todo",
        [("deferred", at(10, 10)), ("started", at(10, 20)), ("deferred_for_retry", at(10, 30))],
    )
    # Another queue's job is not the indexing backlog.
    _job("default", "todo", [("deferred", at(9, 10))])

    backlog = _chart(charts("hour"), "indexing-backlog")

    assert _values(backlog, "peak") == [1.0] * 8 + [2.0, 2.0, 3.0, 3.0]
    assert _values(backlog, "waiting") == [1.0] * 8 + [2.0, 2.0, 3.0, 2.0]


def test_an_empty_database_charts_zeros_and_gaps() -> None:
    board = charts("hour")

    assert [chart.key for chart in board.charts] == [
        "turns",
        "overhead",
        "queue-wait",
        "indexing-backlog",
    ]
    assert _values(_chart(board, "turns"), "completed") == [0.0] * 12
    assert _values(_chart(board, "overhead"), "p95") == [None] * 12
    assert _values(_chart(board, "indexing-backlog"), "waiting") == [0.0] * 12
    assert "No data" not in board.charts[0].summary


def test_the_day_span_has_hourly_buckets() -> None:
    starts = _bucket_starts(HOUR, 24)
    _finished(starts[18] + datetime.timedelta(minutes=1), overhead_ms=120)
    _finished(starts[23], overhead_ms=80, state="failed")

    board = charts("day")

    turns = _chart(board, "turns")
    assert board.span is SPANS["day"]
    assert turns.starts == tuple(starts)
    assert _values(turns, "completed") == [0.0] * 18 + [1.0] + [0.0] * 5
    assert _values(turns, "failed") == [0.0] * 23 + [1.0]
    assert _values(_chart(board, "overhead"), "p50")[18] == pytest.approx(120)
    assert "per hour" in turns.title


@pytest.mark.parametrize("span", ["week", "", "HOUR", "<script>"])
def test_an_unknown_span_is_the_last_hour(span: str) -> None:
    board = charts(span)

    assert board.span is SPANS["hour"]
    assert all(len(chart.data.starts) == 12 for chart in board.charts)


def test_the_section_draws_each_chart_with_titles_a_legend_and_a_summary(
    admin_client: Client,
) -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    _finished(starts[9] + datetime.timedelta(seconds=5), overhead_ms=300, state="failed")
    _finished(starts[11], overhead_ms=40)
    _job("indexing", "todo", [("deferred", starts[10])])

    response = admin_client.get("/admin/charts/")

    html = response.content.decode()
    assert response.status_code == 200
    section = html[html.index('<section id="dashboard-charts"') :]
    assert '<a href="?span=hour" data-span="hour" aria-current="page">last hour</a>' in section
    assert '<a href="?span=day" data-span="day">last day</a>' in section
    for key in ("turns", "overhead", "queue-wait", "indexing-backlog"):
        assert f'<figure data-chart="{key}">' in section
        assert f'<title id="chart-{key}-title">' in section
        assert f'aria-labelledby="chart-{key}-title chart-{key}-desc"' in section
    bucket = f"{starts[9]:%H:%M}-{starts[10]:%H:%M} UTC"
    now = f"{starts[11]:%H:%M}-{starts[11] + FIVE_MINUTES:%H:%M} UTC, so far"
    # A stacked bar per non-empty count, a point per percentile, each with its hover title.
    assert f'fill="var(--chart-failed, #ba2121)"><title>{bucket}: 1 failed</title>' in section
    assert f"<title>{now}: 1 completed</title>" in section
    assert f"<title>{bucket}: p95 300 ms (of 1 turn)</title>" in section
    assert f"<title>{now}: waiting at the bucket&#x27;s end 1 document</title>" in section
    assert 'stroke-dasharray="6 3"' in section
    # Axes: values with units, times in UTC.
    assert ">300 ms</text>" in section
    assert ">0 ms</text>" in section
    assert f">{starts[0]:%H:%M}</text>" in section
    assert ">UTC</text>" in section
    assert '<li data-series="stopped">' in section
    assert "</svg> p50 (median)</li>" in section
    assert (
        "Last hour: 2 turns (1 completed, 1 failed, 0 stopped, 0 other). Latest 5 minutes "
        f"({now}): 1 turn. Most: 1 turn ({now})." in section
    )
    assert (
        f"Last hour, per 5 minutes. p50 (median): 40 ms in the latest ({now}), highest 300 ms "
        f"({bucket}). p95: 40 ms in the latest ({now}), highest 300 ms ({bucket})." in section
    )
    assert f"Most waiting: 1 document in the latest ({now})" in section
    assert "Finished jobs and their events are kept 7 days" in section


def test_the_charts_page_offers_the_day_and_takes_a_bad_span_for_the_hour(
    admin_client: Client,
) -> None:
    day = admin_client.get("/admin/charts/?span=day").content.decode()
    bad = admin_client.get("/admin/charts/?span=%3Cscript%3Ealert(1)%3C/script%3E")

    assert '<a href="?span=day" data-span="day" aria-current="page">' in day
    assert "<h2>Charts, last day</h2>" in day
    assert "Turns finished per hour" in day
    assert bad.status_code == 200
    assert "<h2>Charts, last hour</h2>" in bad.content.decode()
    assert "alert(1)" not in bad.content.decode()


def test_the_charts_page_is_for_staff_only(client: Client) -> None:
    response = client.get("/admin/charts/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_text_in_the_charts_is_escaped() -> None:
    span = SPANS["hour"]
    starts = tuple(
        datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC) + FIVE_MINUTES * i
        for i in range(span.buckets)
    )
    data = ChartData(
        key="turns",
        title="<b>bold</b> & co",
        unit="turns",
        stacked=True,
        starts=starts,
        step=span.step,
        series=(Series("other", "<script>x</script>", (1.0,) * span.buckets),),
        note="a <i>note</i>",
    )
    drawn = charts_svg.drawing(data, span)
    board = ChartsBoard(span=span, charts=[Chart(data, charts_svg.chart_svg(drawn), drawn.summary)])

    html = render_to_string("admin/operations/charts.html", {"charts": board})

    assert "<script>" not in html
    assert "<b>" not in html
    assert "<i>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    assert "12:00-12:05 UTC: 1 &lt;script&gt;x&lt;/script&gt;</title>" in html
    assert "a &lt;i&gt;note&lt;/i&gt;" in html


@pytest.mark.parametrize(
    ("highest_ms", "ticks"),
    [
        # 2 h 49 min: whole hours, not 83.333 min.
        (10_140_000.0, ["0 h", "1 h", "2 h", "3 h"]),
        (150_000.0, ["0 min", "1 min", "2 min", "3 min"]),
        (1_100.0, ["0 ms", "500 ms", "1000 ms", "1500 ms"]),
        (None, ["0 ms", "50 ms"]),  # nothing measured: an axis all the same
    ],
)
def test_a_time_axis_counts_round_numbers_of_one_unit(
    highest_ms: float | None, ticks: list[str]
) -> None:
    span = SPANS["hour"]
    starts = tuple(
        datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC) + FIVE_MINUTES * i
        for i in range(span.buckets)
    )
    values = (highest_ms,) + (None,) * (span.buckets - 1)
    data = ChartData(
        key="overhead",
        title="overhead",
        unit="ms",
        stacked=False,
        starts=starts,
        step=span.step,
        series=(Series("p50", "p50", values),),
        note="",
    )

    assert [tick.label for tick in charts_svg.drawing(data, span).y_ticks] == ticks


@pytest.mark.django_db(transaction=True)
def test_a_database_too_slow_leaves_a_note_instead_of_the_charts(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(charts_module, "CHARTS_STATEMENT_TIMEOUT_MS", 200)

    # A migration or a stuck transaction holding the threads table: nothing can be read.
    with table_locked("conversations_thread"):
        board = charts("hour")
        response = admin_client.get("/admin/charts/?span=day")

    assert board.charts == []
    assert board.unavailable == (
        "The charts are unavailable: the database did not answer within 200 ms (OperationalError)."
    )
    assert response.status_code == 200
    assert '<p class="errornote">The charts are unavailable' in response.content.decode()
    assert "data-chart=" not in response.content.decode()


def _queries(call: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


# A savepoint (the test's transaction is the outer one), the statement timeout, one query per
# chart, the savepoint's release.
CHARTS_QUERIES = 7


@pytest.mark.parametrize("span", ["hour", "day"])
def test_the_charts_cost_a_fixed_number_of_queries_however_many_rows(
    admin_client: Client, span: str
) -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    few = _queries(lambda: charts(span))
    admin_client.get(f"/admin/charts/?span={span}")  # warm the session
    page_few = _queries(lambda: admin_client.get(f"/admin/charts/?span={span}"))
    for number in range(30):
        _finished(
            starts[number % 12], overhead_ms=number, state=("completed", "failed")[number % 2]
        )
        _job("indexing", "todo", [("deferred", starts[number % 12])])

    many = _queries(lambda: charts(span))
    page_many = _queries(lambda: admin_client.get(f"/admin/charts/?span={span}"))

    assert (few, many) == (CHARTS_QUERIES, CHARTS_QUERIES)
    # The session and the user, then the charts.
    assert (page_few, page_many) == (CHARTS_QUERIES + 2, CHARTS_QUERIES + 2)
