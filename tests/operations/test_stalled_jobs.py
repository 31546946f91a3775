"""Jobs left `doing` by a worker killed with SIGKILL are put back to `todo` and run to the end."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from django.db import connection
from procrastinate.contrib.django.models import ProcrastinateJob
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.support.embeddings_server import running_embeddings_server
from tests.support.servers import database_url, worker_process
from workspace import services as workspace_services
from workspace.models import Document, IndexState

pytestmark = pytest.mark.django_db(transaction=True)

# The killed worker beats every 0.2 s; silent for 1 s, it counts as dead.
FAST_HEARTBEATS = {"WORKER_HEARTBEAT_SECONDS": "0.2", "WORKER_STALLED_SECONDS": "1"}


@pytest.fixture(autouse=True)
def _empty_job_queue(settings: SettingsWrapper) -> Iterator[None]:
    """Procrastinate's tables outlive transactional tests: start and end without jobs."""
    settings.WORKER_HEARTBEAT_SECONDS = 0.2
    settings.WORKER_STALLED_SECONDS = 1.0

    def purge() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM procrastinate_jobs")

    purge()
    yield
    purge()


def _wait_for_job(task_name: str, status: str, timeout: float = 30) -> ProcrastinateJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ProcrastinateJob.objects.filter(task_name=task_name, status=status).first()
        if job is not None:
            return job
        time.sleep(0.05)
    raise AssertionError(f"no {task_name} job became {status} within {timeout} s")


def test_an_indexing_job_killed_mid_embedding_is_retried_and_the_document_indexed(
    settings: SettingsWrapper,
) -> None:
    settings.WORKSPACE_INDEXING = "queue"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64
    with running_embeddings_server() as embeddings:
        embeddings.delay = 60
        env = {
            "DATABASE_URL": database_url(connection.settings_dict),
            "EMBEDDING_PROVIDER": "openai",
            "EMBEDDING_BASE_URL": embeddings.url,
            "EMBEDDING_MAX_RETRIES": "0",
            **FAST_HEARTBEATS,
        }
        document = workspace_services.document_write(
            user_id="alice", path="notes/ferns.md", content="ferns grow in the shade"
        )
        with worker_process(env, queues="indexing", concurrency=1) as worker:
            job = _wait_for_job("workspace.index_document", "doing")
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        killed_at = time.monotonic()
        embeddings.delay = 0
        # The service heals itself: the next worker's own sweep finds the dead worker's job
        # (nobody here calls the retry), and runs it to the end.
        with worker_process(
            {**env, "STALLED_JOBS_SWEEP_SECONDS": "0.5"}, queues="indexing", concurrency=1
        ):
            _wait_for_job("workspace.index_document", "succeeded")
        healed_after = time.monotonic() - killed_at

    assert ProcrastinateJob.objects.get(pk=job.pk).status == "succeeded"
    assert Document.objects.get(pk=document.pk).index_state == IndexState.INDEXED
    assert healed_after < 15
