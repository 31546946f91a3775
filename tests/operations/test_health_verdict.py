"""The dashboard's verdict, from real readings: each input, at and around its thresholds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from operations.health import Readiness
from operations.health_verdict import (
    DEGRADED,
    DOWN,
    HEALTHY,
    HealthThresholds,
    Verdict,
    verdict,
)
from operations.pool_status import CounterIncrease, PoolStatus, pool_status
from operations.system_status import QueueStatus, RecentTurns, SystemStatus, WorkerStatus
from tests.support.servers import BASE_DIR

READY = Readiness(True, "ready", "ready", {"database": "ok", "migrations": "ok", "workers": {}})
LIMITS = HealthThresholds()
QUIET_POOL = PoolStatus()


def _status(**changes: Any) -> SystemStatus:
    quiet = SystemStatus(
        threads_by_state={"created": 0, "running": 0, "waiting": 0, "suspended": 0},
        expired_leases=0,
        queues=[QueueStatus("default"), QueueStatus("indexing"), QueueStatus("threads")],
        indexing_backlog=0,
        embedding_errors_last_hour=0,
        runtime_documents_with_chunks=0,
        runtime_documents_with_versions=0,
    )
    return dataclasses.replace(quiet, **changes)


def _worker(kind: str, age: float, worker_id: int = 1) -> WorkerStatus:
    return WorkerStatus(
        worker_id=worker_id,
        kind=kind,
        host="web-1",
        pid=100 + worker_id,
        registered_at=timezone.now(),
        heartbeat_age_seconds=age,
        current_turns=0,
    )


def _judge(status: SystemStatus | None = None, **options: Any) -> Verdict:
    return verdict(
        _status() if status is None else status,
        options.get("readiness", READY),
        options.get("pool", QUIET_POOL),
        options.get("limits", LIMITS),
        unavailable=options.get("unavailable", ""),
    )


def _keys(judged: Verdict) -> list[tuple[str, str]]:
    return [(reason.key, reason.level) for reason in judged.reasons]


def test_a_quiet_system_is_healthy_with_no_reasons() -> None:
    judged = _judge()

    assert judged == Verdict(HEALTHY, ())


@pytest.mark.parametrize(
    ("waited", "level"),
    [
        (None, HEALTHY),
        (10.0, HEALTHY),
        (30.0, HEALTHY),
        (31.0, DEGRADED),
        (120.0, DEGRADED),
        (121.0, DOWN),
        (3600.0, DOWN),
    ],
)
def test_the_oldest_runnable_turns_wait_degrades_then_downs(
    waited: float | None, level: str
) -> None:
    status = _status(queues=[QueueStatus("threads", waiting=3, oldest_waiting_seconds=waited)])

    judged = _judge(status)

    assert judged.level == level
    assert _keys(judged) == ([] if level == HEALTHY else [("queue_wait", level)])
    if level != HEALTHY:
        assert judged.reasons[0].url == "/admin/conversations/thread/?state__exact=created"


def test_the_queue_wait_sentence_gives_the_wait_and_the_threshold() -> None:
    status = _status(queues=[QueueStatus("threads", waiting=1, oldest_waiting_seconds=185.0)])

    (reason,) = _judge(status).reasons

    assert (
        reason.text
        == "The oldest runnable turn has waited 3 min 5 s for a worker (down past 2 min 0 s)."
    )


@pytest.mark.parametrize(
    ("failed", "completed", "level"),
    [
        (0, True, HEALTHY),
        (1, True, DEGRADED),
        (9, False, DEGRADED),
        (10, True, DEGRADED),
        (10, False, DOWN),
        (40, False, DOWN),
    ],
)
def test_failed_turns_degrade_and_are_down_only_when_none_completes(
    failed: int, completed: bool, level: str
) -> None:
    status = _status(recent_turns=RecentTurns(failed=failed, completed=completed))

    judged = _judge(status)

    assert judged.level == level
    assert _keys(judged) == ([] if level == HEALTHY else [("failed_turns", level)])


def test_the_failed_turns_sentence_counts_timeouts_and_links_the_last_15_minutes() -> None:
    status = _status(recent_turns=RecentTurns(failed=12, timed_out=3, completed=False))

    (reason,) = _judge(status).reasons

    assert reason.text == (
        "12 turns failed in the last 15 minutes, 3 of them timed out and none completed."
    )
    assert reason.url == "/admin/conversations/thread/?finished=15m&state__exact=failed"


def test_thresholds_come_from_the_settings(settings: SettingsWrapper) -> None:
    settings.HEALTH_FAILED_TURNS_AMBER = 5
    settings.HEALTH_QUEUE_WAIT_AMBER_SECONDS = 600
    settings.READYZ_WORKERS = ["turns"]
    limits = HealthThresholds.from_settings(settings)
    status = _status(
        recent_turns=RecentTurns(failed=4, completed=True),
        queues=[QueueStatus("threads", waiting=1, oldest_waiting_seconds=300.0)],
    )

    judged = _judge(status, limits=limits)

    assert judged == Verdict(HEALTHY, ())
    assert limits.required_worker_kinds == ("turns",)


@pytest.mark.parametrize(
    ("code", "checks"),
    [
        ("database_unavailable", {"database": "missing"}),
        ("migrations_pending", {"database": "ok", "migrations": "pending"}),
        (
            "workers_missing",
            {"database": "ok", "migrations": "ok", "workers": {"turns": "missing"}},
        ),
    ],
)
def test_readyz_failing_is_down_with_its_message_linking_readyz(
    code: str, checks: dict[str, Any]
) -> None:
    readiness = Readiness(False, code, "what is missing", checks)

    judged = _judge(readiness=readiness)

    assert judged.level == DOWN
    assert _keys(judged) == [(code, DOWN)]
    assert judged.reasons[0].text == "/readyz: what is missing"
    assert judged.reasons[0].url == "/readyz"


def test_figures_the_database_was_too_slow_to_give_are_a_reason_of_their_own() -> None:
    judged = verdict(None, READY, QUIET_POOL, LIMITS, unavailable="The figures are unavailable.")

    assert judged.level == DEGRADED
    assert _keys(judged) == [("status_unavailable", DEGRADED)]


def test_a_database_readyz_cannot_reach_is_said_once() -> None:
    away = Readiness(False, "database_unavailable", "The database is unavailable.", {})

    judged = verdict(None, away, QUIET_POOL, LIMITS, unavailable="The figures are unavailable.")

    assert _keys(judged) == [("database_unavailable", DOWN)]


def test_expired_leases_degrade() -> None:
    judged = _judge(_status(expired_leases=2))

    assert _keys(judged) == [("expired_leases", DEGRADED)]
    assert judged.reasons[0].text.startswith("2 running threads hold an expired lease")
    assert judged.reasons[0].url == "/admin/conversations/thread/?lease=expired"


def test_a_dead_worker_beside_live_ones_of_its_kind_is_stale() -> None:
    workers = (_worker("turns", 2.0, 1), _worker("turns", 45.0, 2))

    judged = _judge(_status(workers=workers))

    assert _keys(judged) == [("workers_stale", DEGRADED)]
    assert judged.reasons[0].url == "#workers"


def test_a_kind_with_no_live_worker_is_missing_unless_readyz_says_so_already() -> None:
    workers = (_worker("turns", 2.0, 1), _worker("background", 400.0, 2))
    required = dataclasses.replace(LIMITS, required_worker_kinds=("background",))

    judged = _judge(_status(workers=workers))
    judged_by_readyz = _judge(_status(workers=workers), limits=required)

    assert _keys(judged) == [("workers_missing", DEGRADED)]
    assert judged.reasons[0].text.startswith("No live background worker: the last heartbeat")
    assert judged_by_readyz == Verdict(HEALTHY, ())


def test_a_worker_as_old_as_the_stall_limit_is_still_alive() -> None:
    judged = _judge(_status(workers=(_worker("turns", LIMITS.worker_stalled_seconds),)))

    assert judged == Verdict(HEALTHY, ())


@pytest.mark.parametrize(
    ("oldest", "level"), [(None, HEALTHY), (300.0, HEALTHY), (301.0, DEGRADED)]
)
def test_an_old_indexing_backlog_degrades(oldest: float | None, level: str) -> None:
    status = _status(indexing_backlog=4, indexing_backlog_oldest_seconds=oldest)

    judged = _judge(status)

    assert judged.level == level
    if level == DEGRADED:
        assert judged.reasons[0].text.startswith("The oldest of 4 pending documents has waited")
        assert judged.reasons[0].url == "/admin/workspace/document/?index_state__exact=pending"


def test_a_background_queues_old_job_degrades_and_links_its_waiting_jobs() -> None:
    status = _status(
        queues=[
            QueueStatus("default", waiting=1, oldest_waiting_seconds=100.0),
            QueueStatus("indexing", waiting=9, oldest_waiting_seconds=900.0),
        ]
    )

    judged = _judge(status)

    assert _keys(judged) == [("job_wait", DEGRADED)]
    assert "indexing queue has waited 15 min 0 s" in judged.reasons[0].text
    assert judged.reasons[0].url == (
        "/admin/procrastinate/procrastinatejob/?queue_name__exact=indexing&status__exact=todo"
    )


@pytest.mark.parametrize(("errors", "level"), [(0, HEALTHY), (1, DEGRADED), (7, DEGRADED)])
def test_embedding_errors_in_the_last_hour_degrade(errors: int, level: str) -> None:
    judged = _judge(_status(embedding_errors_last_hour=errors))

    assert judged.level == level


@pytest.mark.parametrize(
    ("pool", "keys"),
    [
        (PoolStatus(waiting=4), []),
        (PoolStatus(waiting=5), [("db_pool_waiting", DEGRADED)]),
        (PoolStatus(recent_timeouts=None), []),
        (PoolStatus(recent_timeouts=0, timeouts_seconds=60.0), []),
        (PoolStatus(recent_timeouts=2, timeouts_seconds=60.0), [("db_pool_timeouts", DEGRADED)]),
    ],
)
def test_database_pool_waits_and_refusals_degrade(
    pool: PoolStatus, keys: list[tuple[str, str]]
) -> None:
    judged = _judge(pool=pool)

    assert _keys(judged) == keys


def test_reasons_come_worst_first_and_the_worst_is_the_verdict() -> None:
    status = _status(
        expired_leases=1,
        queues=[QueueStatus("threads", waiting=1, oldest_waiting_seconds=500.0)],
        embedding_errors_last_hour=1,
    )

    judged = _judge(status, pool=PoolStatus(waiting=9))

    assert judged.level == DOWN
    assert _keys(judged) == [
        ("queue_wait", DOWN),
        ("expired_leases", DEGRADED),
        ("embedding_errors", DEGRADED),
        ("db_pool_waiting", DEGRADED),
    ]


def test_a_counters_increase_is_measured_from_the_oldest_reading_in_the_window() -> None:
    window = CounterIncrease(60.0)

    first = window.add(5.0, now=0.0)
    later = window.add(8.0, now=30.0)
    after_a_restart = window.add(2.0, now=50.0)
    after_a_quiet_spell = window.add(2.0, now=500.0)

    assert first is None
    assert later == (3, 30.0)
    assert after_a_restart == (2, 50.0)
    assert after_a_quiet_spell is None


_RECORD = """
import sys
from core.metrics import DB_POOL_TIMEOUTS, DB_POOL_WAITING
DB_POOL_WAITING.set(int(sys.argv[1]))
DB_POOL_TIMEOUTS.inc(int(sys.argv[2]))
"""


def _record_in_a_process(folder: Path, waiting: int, timeouts: int) -> None:
    subprocess.run(
        [sys.executable, "-c", _RECORD, str(waiting), str(timeouts)],
        cwd=BASE_DIR,
        env={"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"},
        check=True,
    )


def test_pool_figures_are_summed_over_the_processes_metrics_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record_in_a_process(tmp_path, waiting=3, timeouts=1)
    _record_in_a_process(tmp_path, waiting=4, timeouts=0)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    window = CounterIncrease(600.0)
    before = pool_status(window=window)
    _record_in_a_process(tmp_path, waiting=0, timeouts=2)

    after = pool_status(window=window)

    assert (before.waiting, before.recent_timeouts) == (7, None)
    assert after.waiting == 7
    assert after.recent_timeouts == 2
    assert 0 < after.timeouts_seconds < 60


def test_without_a_metrics_folder_the_pool_figures_are_this_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    status = pool_status(window=CounterIncrease(600.0))

    assert status == PoolStatus(waiting=0, recent_timeouts=None, timeouts_seconds=0.0)
