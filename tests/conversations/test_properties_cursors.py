"""Properties of cursor pagination through the API: pages by seq and newest first, while rows
arrive, and any cursor string a client can send."""

from __future__ import annotations

import base64
import datetime
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from conversations.models import Conversation
from tests.conversations.factories import ConversationFactory, EntryFactory

pytestmark = pytest.mark.django_db

# Every example runs in the test's one transaction, on rows of its own (a fresh conversation or
# channel), with the same API client.
SUITE_EXAMPLES = settings.get_profile(settings.get_current_profile_name()).max_examples
DATABASE_SETTINGS = settings(
    max_examples=max(1, SUITE_EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PAGE_SIZES = st.integers(min_value=1, max_value=7)
# Per page: its size, then how many rows arrive before the next page is asked for.
PAGE_PLANS = st.lists(st.tuples(PAGE_SIZES, st.integers(min_value=0, max_value=4)), max_size=40)
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def alice(tenant_client: Callable[[str], APIClient]) -> APIClient:
    return tenant_client("alice")


def _with_limit(url: str, limit: int) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), "limit": str(limit)}
    return f"{parts.path}?{urlencode(query)}"


def _walk(
    client: APIClient, first_url: str, plan: list[tuple[int, int]], append: Callable[[int], None]
) -> list[dict[str, object]]:
    """Follow ``next`` links with the plan's page sizes, appending rows between pages."""
    seen: list[dict[str, object]] = []
    url: str | None = first_url
    step = 0
    while url is not None:
        # Rows stop arriving once the plan is spent, so the walk can catch up and end.
        limit, arriving = plan[step] if step < len(plan) else (7, 0)
        response = client.get(_with_limit(url, limit))
        assert response.status_code == 200, response.json()
        page = response.json()
        assert len(page["results"]) <= limit
        seen += page["results"]
        url = page["next"]
        if url is not None:
            append(arriving)
        step += 1
        assert step < 1000, "pagination does not end"
    return seen


@DATABASE_SETTINGS
@given(initial=st.integers(min_value=0, max_value=25), plan=PAGE_PLANS)
def test_entry_pages_yield_every_entry_once_in_seq_order_while_entries_arrive(
    alice: APIClient, initial: int, plan: list[tuple[int, int]]
) -> None:
    conversation = ConversationFactory.create(user_id="alice", channel=f"c-{uuid.uuid4().hex[:12]}")
    last_seq = 0

    def append(count: int) -> None:
        nonlocal last_seq
        for _ in range(count):
            last_seq += 1
            EntryFactory.create(conversation=conversation, seq=last_seq)

    append(initial)

    seen = _walk(alice, f"/api/v1/conversations/{conversation.id}/entries", plan, append)

    assert [entry["seq"] for entry in seen] == list(range(1, last_seq + 1))


@DATABASE_SETTINGS
@given(initial=st.integers(min_value=0, max_value=25), plan=PAGE_PLANS)
def test_newest_first_pages_yield_each_existing_conversation_once_while_new_ones_arrive(
    alice: APIClient, initial: int, plan: list[tuple[int, int]]
) -> None:
    channel = f"c-{uuid.uuid4().hex[:12]}"
    created: list[str] = []

    def append(count: int) -> None:
        for _ in range(count):
            conversation = ConversationFactory.create(
                user_id="alice", channel=channel, indexed=False
            )
            # One test transaction means one now(): give each row its own creation time, as
            # separate requests would.
            created_at = START + datetime.timedelta(seconds=len(created))
            Conversation.objects.filter(pk=conversation.pk).update(created_at=created_at)
            created.append(str(conversation.pk))

    append(initial)
    existing = list(reversed(created))

    seen = _walk(alice, f"/api/v1/conversations?channel={channel}", plan, append)

    # Newer conversations sort before the cursor's position: a forward walk never meets them.
    assert [conversation["id"] for conversation in seen] == existing


def _drf_cursor(offset: str, reverse: str, position: str | None) -> str:
    tokens = {"o": offset, "r": reverse}
    if position is not None:
        tokens["p"] = position
    return base64.b64encode(urlencode(tokens).encode()).decode()


DATETIMES = st.datetimes(
    min_value=datetime.datetime(1, 1, 2),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=st.timezones(),
)
POSITIONS = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers().map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    DATETIMES.map(datetime.datetime.isoformat),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{2,15}([+-][0-9]{2}:?[0-9]{2}|Z)?\Z"),
)
CURSORS = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda raw: base64.b64encode(raw).decode()),
    st.builds(
        _drf_cursor,
        st.one_of(st.integers(min_value=-5, max_value=10**6).map(str), st.text(max_size=5)),
        st.sampled_from(["0", "1", "", "2", "x"]),
        POSITIONS,
    ),
)


@settings(DATABASE_SETTINGS, max_examples=2 * SUITE_EXAMPLES)
@given(cursor=CURSORS, endpoint=st.sampled_from(["entries", "conversations"]))
def test_any_cursor_string_is_a_page_or_a_400_naming_the_cursor(
    alice: APIClient, cursor: str, endpoint: str
) -> None:
    conversation = ConversationFactory.create(user_id="alice")
    EntryFactory.create(conversation=conversation, seq=1)
    url = (
        f"/api/v1/conversations/{conversation.id}/entries"
        if endpoint == "entries"
        else "/api/v1/conversations"
    )

    response = alice.get(url, {"cursor": cursor})

    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["error"]["details"] == {"cursor": ["Invalid cursor"]}
