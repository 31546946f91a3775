from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.support.worker import run_worker_until_empty
from workspace import services, tasks
from workspace.models import Chunk, Document, DocumentVersion, IndexState


@pytest.fixture
def queued(settings: SettingsWrapper, no_queued_jobs: None) -> None:
    settings.WORKSPACE_INDEXING = "queue"


def _indexing_jobs() -> list[ProcrastinateJob]:
    return list(ProcrastinateJob.objects.filter(task_name="workspace.index_document"))


@pytest.mark.django_db
@pytest.mark.usefixtures("queued")
def test_a_write_enqueues_one_indexing_job_and_returns_without_indexing() -> None:
    document = services.document_write(user_id="alice", path="a.md", content="ferns")

    jobs = _indexing_jobs()
    assert len(jobs) == 1
    assert jobs[0].queue_name == "indexing"
    assert jobs[0].args == {"document_id": str(document.id)}
    assert jobs[0].queueing_lock == f"workspace-index:{document.id}"
    assert Document.objects.get().index_state == IndexState.PENDING
    assert Chunk.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.usefixtures("queued")
def test_a_burst_of_writes_leaves_one_waiting_job_per_document() -> None:
    with transaction.atomic():
        for number in range(5):
            services.document_write(user_id="alice", path="a.md", content=f"v{number}")
        services.document_write(user_id="alice", path="b.md", content="other")

    assert sorted(job.args["document_id"] for job in _indexing_jobs()) == sorted(
        str(document_id) for document_id in Document.objects.values_list("id", flat=True)
    )
    # The duplicate deferrals did not abort the surrounding transaction: every write landed.
    assert Document.objects.get(path="a.md").content == "v4"


@pytest.mark.django_db
@pytest.mark.usefixtures("queued")
def test_runtime_writes_enqueue_nothing() -> None:
    services.document_write(user_id="alice", path="engine/.runtime/x.json", content="{}")

    assert _indexing_jobs() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("queued")
def test_a_worker_runs_the_job_and_indexes_the_latest_content() -> None:
    services.document_write(user_id="alice", path="a.md", content="first words")
    services.document_write(user_id="alice", path="a.md", content="latest words")

    run_worker_until_empty("indexing")

    document = Document.objects.get(path="a.md")
    assert document.index_state == IndexState.INDEXED
    assert list(Chunk.objects.values_list("content", flat=True)) == ["latest words"]
    assert [job.status for job in _indexing_jobs()] == ["succeeded"]


@pytest.mark.django_db
def test_the_daily_tasks_prune_versions_and_expire_documents_as_the_commands_do(
    settings: SettingsWrapper,
) -> None:
    settings.WORKSPACE_INDEXING = "inline"
    for number in range(services.VERSIONS_KEPT + 3):
        services.document_write(user_id="alice", path="notes/log.md", content=f"entry {number}")
    services.document_write(
        user_id="alice",
        path=".config",
        content="",
        metadata={"hygiene": {"enabled": True, "retention_days": 7}},
    )
    for path in ("AGENTS.md", "old.md"):
        services.document_write(user_id="alice", path=path, content="x")
    Document.objects.filter(path__in=["AGENTS.md", "old.md"]).update(
        updated_at=timezone.now() - timedelta(days=8)
    )

    tasks.versions_prune_job(timestamp=0)
    tasks.workspace_hygiene_job(timestamp=0)

    document = Document.objects.get(path="notes/log.md")
    assert DocumentVersion.objects.filter(document=document).count() == services.VERSIONS_KEPT
    assert sorted(Document.objects.values_list("path", flat=True)) == [
        ".config",
        "AGENTS.md",
        "notes/log.md",
    ]


@pytest.mark.parametrize(
    "error",
    [tasks.IndexingFailed("embedding failed"), OperationalError("the server closed it")],
)
def test_an_indexing_job_failing_on_its_embedding_or_the_database_is_retried(
    error: Exception,
) -> None:
    # Without a retry the job ends failed and its document stays pending for good.
    assert tasks.INDEX_DOCUMENT_RETRY.get_retry_decision(exception=error, job=_job()) is not None


def _job() -> Any:
    from procrastinate.jobs import Job

    return Job(id=1, queue="indexing", lock=None, queueing_lock=None, task_name="t", attempts=0)


def _age(*paths: str, seconds: float) -> None:
    Document.objects.filter(path__in=paths).update(
        updated_at=timezone.now() - timedelta(seconds=seconds)
    )


def _job_statuses(document: Document) -> list[str]:
    jobs = ProcrastinateJob.objects.filter(queueing_lock=f"workspace-index:{document.id}")
    return sorted(job.status for job in jobs)


def _set_job_status(document: Document, *steps: str) -> None:
    # One status change at a time, as a worker makes them (Procrastinate's triggers check each).
    with connection.cursor() as cursor:
        for step in steps:
            cursor.execute(
                "UPDATE procrastinate_jobs SET status = %s WHERE queueing_lock = %s",
                [step, f"workspace-index:{document.id}"],
            )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("queued")
def test_a_pending_document_whose_job_is_gone_is_queued_again_and_indexed(
    settings: SettingsWrapper,
) -> None:
    settings.INDEXING_PENDING_REQUEUE_SECONDS = 300
    services.document_write(user_id="alice", path="a.md", content="acknowledged words")
    # The job is lost (a crash, a prune after it failed): nothing would ever index the document.
    ProcrastinateJob.objects.all().delete()
    _age("a.md", seconds=301)
    run_worker_until_empty("indexing")
    assert Document.objects.get().index_state == IndexState.PENDING

    tasks.pending_documents_requeue_job(timestamp=0)
    run_worker_until_empty("indexing")

    document = Document.objects.get()
    assert document.index_state == IndexState.INDEXED
    assert list(Chunk.objects.values_list("content", flat=True)) == ["acknowledged words"]
    assert _job_statuses(document) == ["succeeded"]


@pytest.mark.django_db
@pytest.mark.usefixtures("queued")
def test_the_sweep_queues_only_documents_pending_too_long_without_a_waiting_or_running_job() -> (
    None
):
    for path in ("waiting.md", "running.md", "failed.md", "recent.md", "indexed.md"):
        services.document_write(user_id="alice", path=path, content=path)
    documents = {document.path: document for document in Document.objects.all()}
    _set_job_status(documents["running.md"], "doing")
    _set_job_status(documents["failed.md"], "doing", "failed")
    ProcrastinateJob.objects.filter(
        queueing_lock__in=[
            f"workspace-index:{documents[path].id}" for path in ("recent.md", "indexed.md")
        ]
    ).delete()
    Document.objects.filter(path="indexed.md").update(index_state=IndexState.INDEXED)
    _age("waiting.md", "running.md", "failed.md", "indexed.md", seconds=600)

    first = services.pending_documents_requeue(pending_for=timedelta(seconds=300))
    second = services.pending_documents_requeue(pending_for=timedelta(seconds=300))

    assert (first.documents_found, first.documents_queued) == (3, 1)
    assert (second.documents_found, second.documents_queued) == (3, 0)
    assert {path: _job_statuses(document) for path, document in documents.items()} == {
        "waiting.md": ["todo"],
        "running.md": ["doing"],
        "failed.md": ["failed", "todo"],
        "recent.md": [],
        "indexed.md": [],
    }


@pytest.mark.django_db
@pytest.mark.usefixtures("queued")
def test_the_sweep_works_in_batches_until_none_is_left() -> None:
    for number in range(5):
        services.document_write(user_id="alice", path=f"{number}.md", content="x")
    ProcrastinateJob.objects.all().delete()
    _age(*(f"{number}.md" for number in range(5)), seconds=600)

    result = services.pending_documents_requeue(pending_for=timedelta(seconds=300), batch_size=2)

    assert (result.documents_found, result.documents_queued, result.batches) == (5, 5, 3)
    assert len(_indexing_jobs()) == 5
