"""Every client method against a live server: workspace, conversations, threads as an engine,
tenant views and typed errors."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from django.utils import timezone
from ironclaw_client import (
    NO_RETRY,
    AuthenticationError,
    Client,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ValidationError,
    usage_body,
)

from accounts.services import CreatedApiKey
from conversations.models import Thread
from conversations.services import thread_claim, thread_leases_sweep
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)

MakeClient = Callable[..., Client]


def test_workspace_methods_round_trip_a_document(make_client: MakeClient) -> None:
    client = make_client("alice")

    written = client.write_document("notes/plan 1.md", "alpha beta", metadata={"tag": "x"})
    client.write_document("notes/plan 1.md", "alpha gamma")
    appended = client.append_document("notes/plan 1.md", "delta")
    patched = client.patch_document("notes/plan 1.md", "gamma", "epsilon")
    read = client.read_document("notes/plan 1.md")
    versions = list(client.document_versions("notes/plan 1.md", page_size=1))
    first = client.document_version("notes/plan 1.md", versions[-1]["version"])
    found = client.search("epsilon", mode="fts")
    restored = client.restore_document("notes/plan 1.md", versions[-1]["version"])
    folder = list(client.list_folder("notes"))
    tree = list(client.tree())
    client.delete_document("notes/plan 1.md")

    assert written["metadata"] == {"tag": "x"}
    assert appended["content"] == "alpha gamma\ndelta"
    assert patched["replacements"] == 1
    assert read["content"] == "alpha epsilon\ndelta"
    assert len(versions) == 3
    assert first["content"] == "alpha beta"
    assert restored["content"] == "alpha beta"
    assert [entry["name"] for entry in folder] == ["plan 1.md"]
    assert [entry["path"] for entry in tree] == ["notes/plan 1.md"]
    assert [result["path"] for result in found["results"]] == ["notes/plan 1.md"]
    assert not Document.objects.filter(user_id="alice").exists()
    with pytest.raises(NotFound) as missing:
        client.read_document("notes/plan 1.md")
    assert (missing.value.status, missing.value.code) == (404, "document_not_found")


def test_conversation_methods_and_cursor_iterators(make_client: MakeClient) -> None:
    client = make_client("alice")

    me = client.me()
    sent = [client.send_message(f"web-{n}", f"hello {n}") for n in range(3)]
    client.send_message("web-0", "again")
    listed = list(client.conversations(page_size=2))
    only_web0 = list(client.conversations(channel="web-0"))
    detail = client.get_conversation(sent[0]["conversation_id"])
    entries = list(client.entries(sent[0]["conversation_id"], page_size=1))
    later = list(client.entries(sent[0]["conversation_id"], after_seq=entries[1]["seq"]))
    policy = client.set_busy_policy(sent[0]["conversation_id"], "queue")
    fresh = client.new_conversation("web-0")
    cleared = client.clear_conversation(sent[0]["conversation_id"])

    assert me == {"user_id": "alice", "key_name": "test", "service": False}
    assert [row["action"] for row in sent] == ["spawned"] * 3
    assert len(listed) == 3
    assert [row["id"] for row in only_web0] == [sent[0]["conversation_id"]]
    assert [thread["id"] for thread in detail["active_threads"]] == [sent[0]["thread_id"]]
    assert [entry["content"] for entry in entries] == ["hello 0", "Thread started", "again"]
    assert [entry["content"] for entry in later] == ["again"]
    assert policy["busy_policy"] == "queue"
    assert fresh["id"] != sent[0]["conversation_id"]
    assert cleared["deleted_entries"] == 3
    assert list(client.entries(sent[0]["conversation_id"])) == []


def test_an_engine_serves_a_thread_through_every_thread_method(make_client: MakeClient) -> None:
    user = make_client("alice")
    engine = make_client(service=True)
    sent = user.send_message("web", "first")
    replies: list[str] = []
    follower = threading.Thread(
        target=lambda: replies.append(
            user.wait_for_reply(sent["conversation_id"], after_seq=sent["seq"], timeout=30)[
                "content"
            ]
        )
    )
    follower.start()

    claimed = engine.next_thread("engine-1", wait_seconds=1)
    assert claimed is not None
    tenant = engine.for_user(claimed["user_id"])
    thread_id = claimed["thread"]["id"]
    again = tenant.claim_thread(thread_id, "engine-1", lease_seconds=30)
    user.send_message("web", "second")
    with tenant.keep_alive(thread_id, "engine-1", interval=0.1) as lease:
        inbox = tenant.take_inbox(thread_id, "engine-1")
        beat = tenant.heartbeat(thread_id, "engine-1", usage=usage_body(steps=1, input_tokens=3))
        time.sleep(0.5)
    suspended = tenant.suspend_thread(thread_id, "engine-1")
    user.send_message("web", "third")
    resumed = engine.next_thread("engine-1", wait_seconds=1)
    assert resumed is not None
    done = tenant.record_outcome(
        thread_id,
        "engine-1",
        "completed",
        response="all done",
        usage=usage_body(steps=1, output_tokens=4, model_ms=12.5, cost_usd="0.01"),
    )
    follower.join(30)
    thread = tenant.get_thread(thread_id)
    idle = engine.next_thread("engine-1")

    assert claimed["user_id"] == "alice"
    assert [entry["content"] for entry in claimed["inbox"]] == []
    assert again["lease_owner"] == "engine-1"
    assert [entry["content"] for entry in inbox] == ["second"]
    assert beat["input_tokens"] == 3
    assert lease.beats >= 2
    assert (lease.cancel_requested, lease.lost) == (False, None)
    assert suspended["state"] == "suspended"
    assert resumed["thread"]["id"] == thread_id
    assert [entry["content"] for entry in resumed["inbox"]] == ["third"]
    assert done["thread"]["state"] == "completed"
    assert replies == ["all done"]
    assert (thread["step_count"], thread["input_tokens"], thread["output_tokens"]) == (2, 3, 4)
    assert thread["model_time_ms"] == 12
    assert idle is None


def test_follow_yields_entries_as_they_are_written(make_client: MakeClient) -> None:
    client = make_client("alice")
    sent = client.send_message("web", "one")
    stop = threading.Event()
    seen: list[str] = []

    def later_messages() -> None:
        time.sleep(0.3)
        client.send_message("web", "two")

    writer = threading.Thread(target=later_messages)
    writer.start()
    for entry in client.follow(sent["conversation_id"], wait_seconds=5, stop=stop):
        seen.append(entry["content"])
        if entry["content"] == "two":
            stop.set()
    writer.join()

    assert seen == ["one", "Thread started", "two"]


def test_wait_for_reply_is_one_long_poll_past_the_thread_started_line(
    make_client: MakeClient,
) -> None:
    user = make_client("alice")
    engine = make_client("alice")
    sent = user.send_message("web", "hello")
    asked: list[httpx.URL] = []
    user._http.event_hooks["request"].append(lambda request: asked.append(request.url))
    replies: list[str] = []
    waiter = threading.Thread(
        target=lambda: replies.append(
            user.wait_for_reply(sent["conversation_id"], after_seq=sent["seq"], timeout=30)[
                "content"
            ]
        )
    )

    waiter.start()
    time.sleep(0.5)
    engine.claim_thread(sent["thread_id"], "engine-1")
    engine.record_outcome(sent["thread_id"], "engine-1", "completed", response="hi")
    waiter.join(30)

    assert replies == ["hi"]
    # "Thread started" (seq 2) was there all along; the one long-poll waited for the reply.
    assert len(asked) == 1
    assert asked[0].params["sender"] == "agent"
    assert asked[0].params["after_seq"] == str(sent["seq"])


def test_entries_and_follow_keep_only_the_sender_asked_for(make_client: MakeClient) -> None:
    client = make_client("alice")
    sent = client.send_message("web", "one")
    client.send_message("web", "two")
    stop = threading.Event()

    systems = list(client.entries(sent["conversation_id"], page_size=1, sender="system"))
    users = list(client.entries(sent["conversation_id"], page_size=1, sender="user"))
    followed = []
    for entry in client.follow(sent["conversation_id"], wait_seconds=1, stop=stop, sender="user"):
        followed.append(entry["content"])
        if entry["content"] == "two":
            stop.set()

    assert [entry["content"] for entry in systems] == ["Thread started"]
    assert [entry["content"] for entry in users] == ["one", "two"]
    assert followed == ["one", "two"]


def test_a_service_view_of_one_tenant_cannot_reach_another_tenants_rows(
    make_client: MakeClient,
) -> None:
    service = make_client(service=True)
    bob = service.for_user("bob")
    bob.write_document("secret.md", "bob's")
    bobs_thread = bob.send_message("web", "hi")["thread_id"]
    alice = service.for_user("alice")

    with pytest.raises(NotFound):
        alice.read_document("secret.md")
    with pytest.raises(NotFound):
        alice.delete_document("secret.md")
    with pytest.raises(NotFound):
        alice.get_thread(bobs_thread)
    with pytest.raises(NotFound):
        alice.claim_thread(bobs_thread, "engine-1")
    assert list(alice.tree()) == []
    assert Thread.objects.get(pk=bobs_thread).state == "created"
    assert Document.objects.get(user_id="bob", path="secret.md").content == "bob's"


def test_a_tenant_key_cannot_escape_its_tenant_with_for_user(make_client: MakeClient) -> None:
    alice = make_client("alice")
    alice.write_document("mine.md", "alice's")

    with pytest.raises(PermissionDenied) as denied:
        alice.for_user("bob").write_document("mine.md", "overwritten")

    assert denied.value.code == "tenant_mismatch"
    assert alice.for_user("alice").read_document("mine.md")["content"] == "alice's"
    assert not Document.objects.filter(user_id="bob").exists()


def test_a_service_view_names_a_non_ascii_tenant(make_client: MakeClient) -> None:
    zoe = make_client(service=True).for_user("zoë")

    zoe.write_document("hello.md", "hi")

    assert zoe.me()["user_id"] == "zoë"
    assert Document.objects.filter(user_id="zoë", path="hello.md").exists()


def test_a_path_or_tenant_that_would_reach_elsewhere_is_refused_before_sending(
    make_client: MakeClient,
) -> None:
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    alice = make_client("alice", http=http)
    service = make_client(service=True, http=http)

    # Resolved by the HTTP client, these would list conversations, read the tree, or write
    # "evil.md" while meaning "notes/../evil.md".
    for path in ("../../conversations", "../tree", "notes/../evil.md", "./x.md", "", "/"):
        with pytest.raises(InvalidArgument):
            alice.read_document(path)
    with pytest.raises(InvalidArgument):
        alice.write_document("notes/../evil.md", "E")
    with pytest.raises(InvalidArgument):
        alice.read_document("\ud800.md")
    for name in ("alice\r\nX-Evil: 1", " alice", "", "bob\x00"):
        with pytest.raises(InvalidArgument):
            service.for_user(name)

    assert sent == []
    assert not Document.objects.filter(path__contains="evil").exists()
    # Dots inside a name are just characters.
    alice.write_document("notes/v1..2.md", "ok")
    assert alice.read_document("notes/v1..2.md")["content"] == "ok"


def test_errors_are_typed_and_conflicts_are_not_retried(
    make_client: MakeClient, live_url: str
) -> None:
    alice = make_client("alice")
    sent = alice.send_message("web", "hi")
    alice.claim_thread(sent["thread_id"], "engine-1")
    requests: list[str] = []
    alice._http.event_hooks["request"].append(lambda request: requests.append(request.url.path))

    with pytest.raises(Conflict) as taken:
        alice.claim_thread(sent["thread_id"], "engine-2")
    with pytest.raises(ValidationError) as invalid:
        alice.next_thread("")
    with pytest.raises(AuthenticationError) as unknown:
        Client(live_url, "not-a-key", retry=NO_RETRY).me()

    assert (taken.value.status, taken.value.code) == (409, "thread_not_claimable")
    assert type(taken.value) is Conflict
    assert requests == [f"/api/v1/threads/{sent['thread_id']}/claim", "/api/v1/threads/next"]
    assert "worker_id" in invalid.value.details
    assert unknown.value.status == 401


def test_a_client_runs_over_an_httpx_client_the_caller_configured(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice").raw_key
    seen: list[str] = []

    with httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]}) as http:
        me = Client(live_url, key, http=http).me()

    assert me["user_id"] == "alice"
    assert seen == [f"{live_url}/api/v1/me"]


def test_an_engine_that_lost_its_lease_to_a_takeover_is_told_lease_lost(
    make_client: Callable[..., Client],
) -> None:
    user = make_client("alice")
    engine = make_client("alice")
    sent = user.send_message("web", "go")
    claimed = engine.claim_thread(sent["thread_id"], "engine-1")
    epoch = claimed["claim_count"]
    Thread.objects.filter(pk=sent["thread_id"]).update(lease_expires_at=timezone.now())
    thread_leases_sweep()
    thread_claim(user_id="alice", thread_id=uuid.UUID(sent["thread_id"]), worker_id="engine-1")

    with engine.keep_alive(
        sent["thread_id"], "engine-1", interval=0.05, lease_epoch=epoch
    ) as lease:
        time.sleep(0.3)
    with pytest.raises(Conflict) as late:
        engine.record_outcome(
            sent["thread_id"], "engine-1", "completed", response="late", lease_epoch=epoch
        )

    assert lease.lost is not None
    assert lease.lost.code == "lease_lost"
    assert (late.value.status, late.value.code) == (409, "lease_lost")
    assert Thread.objects.get(pk=sent["thread_id"]).state == "running"
