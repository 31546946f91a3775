"""The workspace API under a real web server process: body limits and errors as clients see them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from tests.support.servers import app_server, database_url

pytestmark = pytest.mark.django_db(transaction=True)


def send(url: str, method: str, key: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_real_server_accepts_five_mib_refuses_one_byte_more_and_searches(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "WORKSPACE_INDEXING": "inline",
        "DATABASE_POOL_SIZE": "4",
    }
    big = "word " * (5 * 1024 * 1024 // 5)

    with app_server(env) as base:
        docs = f"{base}/api/v1/workspace/documents"
        accepted = send(f"{docs}/engine/.runtime/big.json", "PUT", key, {"content": big})
        refused = send(f"{docs}/engine/.runtime/big.json", "PUT", key, {"content": big + "x"})
        written = send(f"{docs}/engine/knowledge/lessons/one.md", "PUT", key, {"content": "Ferns."})
        found = send(f"{base}/api/v1/workspace/search", "POST", key, {"query": '"ferns" AND (x -y'})
        searched = send(f"{base}/api/v1/workspace/search", "POST", key, {"query": "ferns"})

    assert accepted[0] == 200
    assert accepted[1]["is_runtime"] is True
    assert refused[0] == 413
    assert refused[1]["error"]["code"] == "document_too_large"
    assert written[0] == 200
    assert found[0] == 200
    assert [result["path"] for result in searched[1]["results"]] == [
        "engine/knowledge/lessons/one.md"
    ]
