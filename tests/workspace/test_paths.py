from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from workspace.errors import InvalidPath
from workspace.paths import config_paths_for, is_runtime_path, normalise_directory, normalise_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a//b/", "a/b"),
        ("  /foo/  ", "foo"),
        ("//engine//.runtime/a", "engine/.runtime/a"),
        ("notes/…/ünïcode.md", "notes/…/ünïcode.md"),
        ("a/.../b", "a/.../b"),
    ],
)
def test_normalise_path_trims_and_collapses_slashes(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("///", "empty"),
        ("   ", "empty"),
        ("engine/.runtime/../knowledge/k.md", "'..'"),
        ("a/./b", "'.'"),
        ("..", "'..'"),
        ("a\\b", "backslash"),
        ("C:\\Users\\x", "backslash"),
        ("D:/data/x.md", "drive-letter"),
        ("c:", "drive-letter"),
        ("~/notes.md", "home-directory"),
        ("~root/x", "home-directory"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("x" * 1025, "too long"),
        ("é" * 800, "too long"),
    ],
)
def test_normalise_path_rejects_bad_paths_naming_the_problem(raw: str, problem: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        normalise_path(raw)

    assert problem in caught.value.message or problem in str(caught.value.details)
    assert "path" in caught.value.details


def test_normalise_path_accepts_exactly_1024_characters() -> None:
    assert len(normalise_path("x" * 1024)) == 1024


def test_normalise_directory_accepts_the_root() -> None:
    assert normalise_directory("") == ""
    assert normalise_directory("/") == ""
    assert normalise_directory("/a/b/") == "a/b"


@pytest.mark.parametrize(
    ("raw", "runtime"),
    [
        ("engine/.runtime/x", True),
        ("engine/.runtimex/y", False),
        ("engine/projects/p/a.json", True),
        ("engine/knowledge/k.md", False),
        ("engine/orchestrator/failures.json", True),
        ("engine/orchestrator/v3.py", False),
        ("engine/orchestrator/overlay.md", False),
        ("engine/README.md", True),
        ("Engine/README.md", False),
        ("engine/readme.md", False),
        ("engine/README.md/x", False),
        ("//engine//.runtime/a", True),
        ("engine/.runtime", False),
        ("notes/engine/.runtime/x", False),
    ],
)
def test_runtime_predicate_matches_the_default_rules(raw: str, runtime: bool) -> None:
    assert is_runtime_path(normalise_path(raw)) is runtime


def test_runtime_predicate_cannot_be_reached_through_dot_dot() -> None:
    with pytest.raises(InvalidPath):
        normalise_path("engine/.runtime/../knowledge/k.md")


def test_empty_runtime_setting_means_no_runtime_paths(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_RUNTIME_PATHS = []

    assert not is_runtime_path("engine/.runtime/x")
    assert not is_runtime_path("engine/README.md")


def test_runtime_setting_entries_without_slash_are_exact(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_RUNTIME_PATHS = ["state/", "one.json"]

    assert is_runtime_path("state/a/b")
    assert is_runtime_path("one.json")
    assert not is_runtime_path("one.json.bak")
    assert not is_runtime_path("engine/.runtime/x")


def test_config_paths_are_listed_nearest_first() -> None:
    assert config_paths_for("a/b/c.md") == ["a/b/.config", "a/.config", ".config"]
    assert config_paths_for("c.md") == [".config"]
    assert config_paths_for("a/.config") == [".config"]
