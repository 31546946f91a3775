from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings


def test_conversations_never_imports_the_engine() -> None:
    imported: set[str] = set()
    for source in Path(settings.BASE_DIR, "conversations").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])

    assert "engine" not in imported
    assert "conversations" in imported  # the scan saw the app's own imports
