"""The README's five-minute tour, run as written: its ```bash block after ``<!-- tour -->`` runs
in bash (``set -euo pipefail``) against a real ``manage.py serve`` on a free port, as the second
terminal of a reader whose first one runs ``make run``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from django.db import connection

from tests.support.serve import serve_process
from tests.support.servers import BASE_DIR, database_url

pytestmark = pytest.mark.django_db(transaction=True)

TOUR_MARKER = "<!-- tour -->"


def tour_script() -> str:
    """The shell block right after the tour marker, exactly as a reader would copy it."""
    readme = (BASE_DIR / "README.md").read_text()
    assert readme.count(TOUR_MARKER) == 1, "README.md must mark exactly one tour block"
    after = readme.split(TOUR_MARKER, 1)[1]
    block = re.match(r"\s*```bash\n(.*?)\n```", after, re.DOTALL)
    assert block is not None, f"no ```bash block right after {TOUR_MARKER} in README.md"
    return block.group(1)


def test_the_readme_tour_runs_and_gets_the_echo_reply_and_a_search_hit() -> None:
    if shutil.which("curl") is None:
        pytest.skip("the tour uses curl, which is not installed")
    env = {"DATABASE_URL": database_url(connection.settings_dict), "ENGINE_MODEL": "echo"}

    with serve_process(env) as serve:
        port = serve.base_url.rsplit(":", 1)[1]
        # The reader's .venv/bin/python is whichever Python runs this suite.
        script = tour_script().replace(".venv/bin/python", sys.executable)
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=BASE_DIR,
            env={**os.environ, **env, "PORT": port},
            capture_output=True,
            text=True,
            timeout=180,
        )

    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "{'user_id': 'alice', 'key_name': 'tour', 'service': False}" in result.stdout, output
    assert "reply: echo: hello\n" in result.stdout, output
    # The entries listed after the reply: the thread's start, then the agent's answer.
    assert re.search(r"^\d+ system: Thread started$", result.stdout, re.MULTILINE), output
    assert re.search(r"^\d+ agent: echo: hello$", result.stdout, re.MULTILINE), output
    assert re.search(r"^completed 1 \d+$", result.stdout, re.MULTILINE), output
    events = re.findall(r"^thread event: (\w+)$", result.stdout, re.MULTILINE)
    assert events == ["spawned", "claimed", "step", "completed"], output
    assert re.search(r"^1\.00 notes/garden\.md: '# Garden", result.stdout, re.MULTILINE), output
    assert "Superuser created successfully." in result.stdout, output
    assert f"Open http://localhost:{port}/admin/" in result.stdout, output
