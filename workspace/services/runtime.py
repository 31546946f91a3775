"""Runtime paths (engine state): each operation is one SQL statement on the document row.

The statements bind their values server-side: a checkpoint's content travels as a parameter
instead of being escaped into the SQL text and parsed back out of it.

No metadata lookup, version, chunk, embedding or lock beyond the row; a second statement runs only
when the first returned no row, to read the row or to say why nothing changed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from psycopg.types.json import Jsonb

from core.db import ModelRows, server_bound_cursor
from workspace.errors import DocumentNotFound, DocumentTooLarge, PatchFailed, WriteFenced
from workspace.metrics import RUNTIME_WRITES
from workspace.models import Document
from workspace.services.content import content_hash

_DOCUMENTS = ModelRows(Document)
_DOCUMENT_COLUMNS = _DOCUMENTS.columns("d")
# A write knows the content it wrote (an unchanged row has the same hash, so the same content):
# it does not read the document's largest column back.
_WRITTEN_FIELDS = [field for field in Document._meta.concrete_fields if field.name != "content"]
_WRITTEN_COLUMNS = ", ".join(f"d.{field.column}" for field in _WRITTEN_FIELDS)
_SQL_HASH = "'sha256:' || encode(sha256(convert_to({}, 'UTF8')), 'hex')"


# The CTE returns the row whether or not it changed, so an unchanged write is still one statement.
# The fallback SELECT sees the statement's snapshot; it can miss a row another transaction inserted
# concurrently (then the caller reads once more: the budget's second statement).
_RUNTIME_UPSERT = """
    INSERT INTO workspace_document AS d
        (id, user_id, path, content, content_hash, metadata, is_runtime, index_state,
         indexed_hash, created_at, updated_at)
    {rows}
    ON CONFLICT (user_id, path) DO UPDATE SET
        content = EXCLUDED.content,
        content_hash = EXCLUDED.content_hash,
        metadata = CASE WHEN %(metadata_given)s THEN EXCLUDED.metadata ELSE d.metadata END,
        is_runtime = true,
        index_state = 'skipped',
        indexed_hash = '',
        updated_at = now()
    WHERE d.content_hash IS DISTINCT FROM EXCLUDED.content_hash
       OR NOT d.is_runtime
       OR (%(metadata_given)s AND d.metadata IS DISTINCT FROM EXCLUDED.metadata)
    RETURNING {columns}
"""
_NEW_ROW = (
    "%(id)s, %(user_id)s, %(path)s, %(content)s, %(hash)s, %(metadata)s, true, 'skipped', '', "
    "now(), now()"
)
_RUNTIME_WRITE_SQL = f"""
WITH upserted AS ({_RUNTIME_UPSERT.format(rows=f"VALUES ({_NEW_ROW})", columns=_WRITTEN_COLUMNS)})
SELECT * FROM upserted
UNION ALL
SELECT {_WRITTEN_COLUMNS} FROM workspace_document d
WHERE d.user_id = %(user_id)s AND d.path = %(path)s AND NOT EXISTS (SELECT 1 FROM upserted)
"""


@dataclass(frozen=True)
class WriteFence:
    """What a write is applied under. ``sql`` returns a row while the writer may write, and
    locks the row it reads (``FOR SHARE``, or an ``UPDATE ... RETURNING``), so that whatever
    takes the right away (an UPDATE of that row) waits for the write's commit, and a write that
    comes after it finds no row. ``params`` are its named parameters (``%(fence_...)s``). A
    write whose fence finds no row changes nothing and raises ``WriteFenced``.

    ``effect``: a data-modifying statement run in the same statement as the write, reading
    the fence's row (``... FROM fence``): it happens exactly when the write does."""

    sql: str
    params: Mapping[str, Any]
    effect: str = ""


@functools.cache
def _fenced_write_sql(fence_sql: str, effect: str = "") -> str:
    """_RUNTIME_WRITE_SQL under a fence, still one statement: the upsert inserts from the fence's
    row, and the last column says whether the fence let the write through."""
    upsert = _RUNTIME_UPSERT.format(rows=f"SELECT {_NEW_ROW} FROM fence", columns=_WRITTEN_COLUMNS)
    nulls = ", ".join("NULL" for _ in _WRITTEN_FIELDS)
    # Data-modifying CTEs run to completion whether or not anything reads them.
    effect_cte = f", fence_effect AS ({effect})" if effect else ""
    return f"""
WITH fence AS ({fence_sql}){effect_cte}, upserted AS ({upsert})
SELECT *, true FROM upserted
UNION ALL
SELECT {_WRITTEN_COLUMNS}, true FROM workspace_document d
WHERE d.user_id = %(user_id)s AND d.path = %(path)s AND NOT EXISTS (SELECT 1 FROM upserted)
  AND EXISTS (SELECT 1 FROM fence)
UNION ALL
SELECT {nulls}, false WHERE NOT EXISTS (SELECT 1 FROM fence)
"""


_APPENDED = (
    "CASE WHEN d.content = '' THEN EXCLUDED.content "
    "ELSE d.content || E'\\n' || EXCLUDED.content END"
)

# Appending in SQL makes concurrent runtime appends lossless without a read-modify-write.
_RUNTIME_APPEND_SQL = f"""
INSERT INTO workspace_document AS d
    (id, user_id, path, content, content_hash, metadata, is_runtime, index_state, indexed_hash,
     created_at, updated_at)
VALUES (%(id)s, %(user_id)s, %(path)s, %(content)s, %(hash)s, '{{}}', true, 'skipped', '',
        now(), now())
ON CONFLICT (user_id, path) DO UPDATE SET
    content = {_APPENDED},
    content_hash = {_SQL_HASH.format(_APPENDED)},
    is_runtime = true,
    index_state = 'skipped',
    indexed_hash = '',
    updated_at = now()
WHERE octet_length(d.content) + 1 + octet_length(EXCLUDED.content) <= %(limit)s
RETURNING {_DOCUMENT_COLUMNS}
"""

# The CTE locks the row and reads its latest committed content; the UPDATE computes from that
# locked copy, so the replacement count and the new content always describe the same version.
_RUNTIME_PATCH_SQL = f"""
WITH locked AS (
    SELECT id, content FROM workspace_document
    WHERE user_id = %(user_id)s AND path = %(path)s
    FOR NO KEY UPDATE
), patched AS (
    SELECT id, content AS old_content,
           CASE WHEN %(replace_all)s THEN replace(content, %(old)s, %(new)s)
                ELSE overlay(content PLACING %(new)s
                             FROM strpos(content, %(old)s) FOR char_length(%(old)s))
           END AS new_content
    FROM locked
    WHERE strpos(content, %(old)s) > 0
)
UPDATE workspace_document AS d SET
    content = p.new_content,
    content_hash = {_SQL_HASH.format("p.new_content")},
    is_runtime = true,
    index_state = 'skipped',
    indexed_hash = '',
    updated_at = now()
FROM patched p
WHERE d.id = p.id AND d.user_id = %(user_id)s AND octet_length(p.new_content) <= %(limit)s
RETURNING {_DOCUMENT_COLUMNS},
    CASE WHEN %(replace_all)s
         THEN (char_length(p.old_content) - char_length(replace(p.old_content, %(old)s, '')))
              / char_length(%(old)s)
         ELSE 1 END
"""


def _new_row_params(*, user_id: str, path: str, content: str) -> dict[str, Any]:
    """The values an upsert inserts when the document does not exist yet."""
    return {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "path": path,
        "content": content,
        "hash": content_hash(content),
    }


def runtime_write(
    *,
    user_id: str,
    path: str,
    content: str,
    metadata: dict[str, Any] | None,
    fence: WriteFence | None = None,
) -> Document:
    params: dict[str, Any] = {
        **_new_row_params(user_id=user_id, path=path, content=content),
        "metadata": Jsonb(metadata or {}),
        "metadata_given": metadata is not None,
    }
    with server_bound_cursor() as cursor:
        if fence is None:
            cursor.execute(_RUNTIME_WRITE_SQL, params)
            row = cursor.fetchone()
        else:
            cursor.execute(_fenced_write_sql(fence.sql, fence.effect), {**params, **fence.params})
            fenced = cursor.fetchone()
            if fenced is not None and not fenced[-1]:
                raise WriteFenced(details={"path": path})
            row = None if fenced is None else fenced[:-1]
        if row is None:
            cursor.execute(
                f"SELECT {_WRITTEN_COLUMNS} FROM workspace_document d "
                "WHERE d.user_id = %s AND d.path = %s",
                [user_id, path],
            )
            row = cursor.fetchone()
    if row is None:  # deleted between the two statements: report the write as not applied
        raise DocumentNotFound.for_path(path)
    RUNTIME_WRITES.inc()
    values = dict(zip((field.attname for field in _WRITTEN_FIELDS), row, strict=True))
    values["content"] = content
    return _DOCUMENTS.instance([values[attname] for attname in _DOCUMENTS.attnames])


def runtime_append(*, user_id: str, path: str, content: str) -> Document:
    params: dict[str, Any] = {
        **_new_row_params(user_id=user_id, path=path, content=content),
        "limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES,
    }
    with server_bound_cursor() as cursor:
        cursor.execute(_RUNTIME_APPEND_SQL, params)
        row = cursor.fetchone()
    if row is None:
        limit = settings.WORKSPACE_MAX_DOCUMENT_BYTES
        raise DocumentTooLarge(
            f"Appending would make the document larger than {limit} bytes.",
            details={"limit": limit},
        )
    RUNTIME_WRITES.inc()
    return _DOCUMENTS.instance(row)


def runtime_patch(
    *, user_id: str, path: str, old: str, new: str, replace_all: bool
) -> tuple[Document, int]:
    params: dict[str, Any] = {
        "user_id": user_id,
        "path": path,
        "old": old,
        "new": new,
        "replace_all": replace_all,
        "limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES,
    }
    with server_bound_cursor() as cursor:
        cursor.execute(_RUNTIME_PATCH_SQL, params)
        row = cursor.fetchone()
        if row is not None:
            RUNTIME_WRITES.inc()
            return _DOCUMENTS.instance(row), int(row[-1])
        cursor.execute(
            "SELECT strpos(content, %s) > 0 FROM workspace_document "
            "WHERE user_id = %s AND path = %s",
            [old, user_id, path],
        )
        found = cursor.fetchone()
    if found is None:
        raise DocumentNotFound.for_path(path)
    if not found[0]:
        raise PatchFailed(
            "old was not found in the document.", details={"old": ["not found in the document"]}
        )
    raise DocumentTooLarge(
        "The patched document would be too large.",
        details={"limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES},
    )
