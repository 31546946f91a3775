"""Workspace paths: normalisation, validation and the engine-runtime predicate.

The workspace is a namespace, not a disk: paths are normalised (trim, strip surrounding ``/``,
collapse ``//``) and anything that could mean something else on a file system (``.``/``..``
segments, backslashes, ``~``, drive letters, control characters) is refused. Because ``..`` never
gets in, a runtime prefix cannot be escaped or faked by a path that merely starts with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from core.text import has_control_characters
from workspace.errors import InvalidPath

MAX_PATH_CHARACTERS = 1024
# Postgres btree entries must stay under ~2700 bytes; with a 255-character user_id in the same
# unique index, 1536 bytes of path keeps every (user_id, path) key indexable.
MAX_PATH_BYTES = 1536
CONFIG_NAME = ".config"
# The tenant's identity files, which the engine reads at the workspace root into every turn's
# prompt. Folder hygiene never deletes a document with one of these names, in any folder: a
# retention rule on the root (or on a folder holding a project's own copy) must not erase who the
# agent is.
IDENTITY_NAMES = ("AGENTS.md", "SOUL.md", "USER.md", "MEMORY.md")

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:([/\\]|$)")
_SLASHES = re.compile(r"/{2,}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _problem(raw: str) -> str | None:
    if "\\" in raw:
        return "must not contain backslashes"
    # Controls (Cc) only: format characters such as the zero-width joiner inside emoji sequences
    # stay allowed in document names.
    if has_control_characters(raw, include_format=False):
        return "must not contain control characters"
    if _SURROGATE.search(raw):
        return "must be valid Unicode"
    return None


def _shape_problem(path: str) -> str | None:
    # Checked on the normalised path: "/~x" and "/C:/x" normalise to "~x" and "C:/x".
    if path.startswith("~"):
        return "looks like a home-directory path (~); workspace paths are relative names"
    if _DRIVE_LETTER.match(path):
        return "looks like a drive-letter path; workspace paths are relative names"
    return None


def _normalise(raw: str) -> str:
    # Whitespace and slashes are stripped until neither is left at either end, so that
    # normalising twice changes nothing: "/notes /" is "notes", like "notes ".
    path = _SLASHES.sub("/", raw)
    while path != (stripped := path.strip().strip("/")):
        path = stripped
    return path


def _check_shape(path: str) -> None:
    problem = _shape_problem(path)
    if problem:
        raise InvalidPath(f"Invalid path: {problem}.", details={"path": [problem]})
    for segment in path.split("/"):
        if segment in {".", ".."}:
            raise InvalidPath(
                f"Path segments '.' and '..' are not allowed: {path!r}.",
                details={"path": ["must not contain '.' or '..' segments"]},
            )
    if len(path) > MAX_PATH_CHARACTERS or len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(
            f"Path is too long (at most {MAX_PATH_CHARACTERS} characters, {MAX_PATH_BYTES} bytes).",
            details={"path": [f"must be at most {MAX_PATH_CHARACTERS} characters"]},
        )


def normalise_path(raw: str) -> str:
    """The canonical form of a document path, or ``InvalidPath`` naming the problem."""
    problem = _problem(raw)
    if problem:
        raise InvalidPath(f"Invalid path: {problem}.", details={"path": [problem]})
    path = _normalise(raw)
    if not path:
        raise InvalidPath("The path is empty.", details={"path": ["must not be empty"]})
    _check_shape(path)
    return path


def normalise_directory(raw: str) -> str:
    """Like ``normalise_path``, but the root (``""`` or ``/``) is allowed and returned as ``""``."""
    problem = _problem(raw)
    if problem:
        raise InvalidPath(f"Invalid path: {problem}.", details={"path": [problem]})
    path = _normalise(raw)
    if path:
        _check_shape(path)
    return path


@dataclass(frozen=True)
class RuntimeRules:
    """Parsed ``WORKSPACE_RUNTIME_PATHS``: entries ending in ``/`` are prefixes, others exact."""

    prefixes: tuple[str, ...]
    exact: frozenset[str]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> RuntimeRules:
        prefixes = tuple(entry for entry in entries if entry.endswith("/"))
        exact = frozenset(entry for entry in entries if not entry.endswith("/"))
        return cls(prefixes=prefixes, exact=exact)

    def matches(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


_rules_cache: tuple[tuple[str, ...], RuntimeRules] | None = None


def runtime_rules() -> RuntimeRules:
    global _rules_cache
    entries = tuple(settings.WORKSPACE_RUNTIME_PATHS)
    # Parsed once per distinct setting value: the predicate runs on every write.
    if _rules_cache is None or _rules_cache[0] != entries:
        _rules_cache = (entries, RuntimeRules.parse(entries))
    return _rules_cache[1]


def is_runtime_path(path: str) -> bool:
    """Whether a *normalised* path holds engine runtime state (case-sensitive match)."""
    return runtime_rules().matches(path)


def config_paths_for(path: str) -> list[str]:
    """The ``.config`` documents that can hold folder defaults for ``path``, nearest first."""
    parts = path.split("/")[:-1]
    candidates = ["/".join([*parts[:depth], CONFIG_NAME]) for depth in range(len(parts), -1, -1)]
    return [candidate for candidate in candidates if candidate != path]
