from __future__ import annotations

import pytest
from django.db import connection

from conversations.models import Conversation
from core.db import bounded_transaction, lock_timeout_bound
from core.errors import Conflict

pytestmark = pytest.mark.django_db


def _lock_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        return str(cursor.fetchone()[0])


def test_the_bound_is_set_by_a_first_statement_that_matches_no_row() -> None:
    with bounded_transaction(lock_timeout_ms=1234, busy=Conflict, bound_by_first_statement=True):
        found = list(
            Conversation.objects.for_update().filter(lock_timeout_bound(1234), user_id="nobody")
        )

        assert found == []
        assert _lock_timeout() == "1234ms"


def test_a_first_statement_without_the_bound_is_refused() -> None:
    with (
        pytest.raises(RuntimeError, match="must set its bound"),
        bounded_transaction(lock_timeout_ms=1234, busy=Conflict, bound_by_first_statement=True),
    ):
        list(Conversation.objects.for_update())
