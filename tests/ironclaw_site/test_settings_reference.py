"""docs/settings.md and .env.example describe exactly the variables the settings read, once each.

The variables read are found without a hand-kept list, two ways that check each other: the string
literals passed to the readers of ironclaw_site.env anywhere in ironclaw_site/ (so a variable read
only in production, or only with DATABASE_URL set, still counts), and the names the readers
recorded in env.REQUESTED while a fresh process imported the settings.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIRING = ROOT / "ironclaw_site"
ENV_MODULE = "ironclaw_site.env"


def _reader_calls(path: Path) -> list[ast.Call]:
    """Calls, in one module, of the readers it imports from ironclaw_site.env."""
    tree = ast.parse(path.read_text(), filename=str(path))
    readers = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == ENV_MODULE
        for alias in node.names
        if alias.name.startswith("env_")
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in readers
    ]


def _wiring_modules() -> list[Path]:
    return sorted(path for path in WIRING.rglob("*.py") if path != WIRING / "env.py")


def variables_in_source() -> set[str]:
    names: set[str] = set()
    for path in _wiring_modules():
        for call in _reader_calls(path):
            first = call.args[0] if call.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            # A name the scan cannot see would escape this test: settings name variables literally.
            assert isinstance(name, str), (
                f"{path.relative_to(ROOT)}:{call.lineno}: pass the variable name to "
                f"{ast.unparse(call.func)} as a string literal"
            )
            names.add(name)
    return names


def variables_recorded_at_import() -> set[str]:
    """What the readers were asked for while a fresh interpreter imported the settings."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, ironclaw_site.settings; from ironclaw_site.env import REQUESTED; "
            "print(json.dumps(sorted(REQUESTED)))",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def documented_in_reference() -> list[str]:
    """The first cell of every table row of docs/settings.md that names a variable."""
    text = (ROOT / "docs" / "settings.md").read_text()
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, re.MULTILINE)


def listed_in_env_example() -> list[str]:
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.MULTILINE)


def test_the_source_scan_sees_every_variable_the_settings_read() -> None:
    hidden = variables_recorded_at_import() - variables_in_source()

    assert sorted(hidden) == [], "read at import but not found by the scan of ironclaw_site/"


def test_the_settings_read_the_environment_only_through_the_readers() -> None:
    # asgi.py and wsgi.py only default DJANGO_SETTINGS_MODULE, which is no setting.
    for path in _wiring_modules():
        if path.name in {"asgi.py", "wsgi.py"}:
            continue
        source = path.read_text()
        for needle in ("os.environ", "getenv"):
            assert needle not in source, f"{path.relative_to(ROOT)} reads {needle} directly"


def test_docs_settings_describe_each_variable_read_exactly_once() -> None:
    read = variables_in_source()
    documented = documented_in_reference()

    assert sorted(read - set(documented)) == [], "missing from docs/settings.md"
    assert sorted(set(documented) - read) == [], "in docs/settings.md but never read"
    assert [name for name, n in Counter(documented).items() if n > 1] == [], "documented twice"


def test_env_example_lists_each_variable_read_exactly_once() -> None:
    read = variables_in_source()
    listed = listed_in_env_example()

    assert sorted(read - set(listed)) == [], "missing from .env.example"
    assert sorted(set(listed) - read) == [], "in .env.example but never read"
    assert [name for name, n in Counter(listed).items() if n > 1] == [], "listed twice"
