"""Check that the pinned requirements install from wheels on Python 3.12, 3.13 and 3.14, not
only on the Python running CI (pgserver 0.1.4 had no wheel for 3.13 and broke `make run` there).

Run by .ci/run and `make check-requirements`. Offline it says so and exits 0: it checks PyPI, and
an unreachable PyPI is no failure of the requirements.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_VERSIONS = ("3.12", "3.13", "3.14")
INDEX = "https://pypi.org/simple"
ROOT = Path(__file__).resolve().parent.parent


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def main() -> int:
    if not pypi_reachable():
        versions = ", ".join(PYTHON_VERSIONS)
        if os.environ.get("CI"):
            # In CI an unchecked resolution must not pass for a checked one.
            print(
                "FAILED: pypi.org is unreachable, so the resolution of the pinned requirements "
                f"for Python {versions} could not be checked (CI is set)."
            )
            return 1
        print(
            "SKIPPED: pypi.org is unreachable (offline), so the resolution of the pinned "
            f"requirements for Python {versions} was not checked."
        )
        return 0
    with tempfile.TemporaryDirectory() as target:
        # requirements-dev.txt pulls in requirements.txt and requirements-embedded.txt.
        # --isolated: PyPI as a fresh clone sees it, not this machine's pip configuration.
        # --dry-run reads the wheels' metadata only; --target is what --python-version requires.
        resolving = {
            version: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--isolated",
                    "--disable-pip-version-check",
                    "--dry-run",
                    "--quiet",
                    "--ignore-installed",
                    "--only-binary=:all:",
                    "--python-version",
                    version,
                    "--target",
                    str(Path(target) / version),
                    "--index-url",
                    INDEX,
                    "-r",
                    "requirements-dev.txt",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for version in PYTHON_VERSIONS
        }
        failed = False
        for version, process in resolving.items():
            output, _ = process.communicate(timeout=900)
            if process.returncode == 0:
                print(f"Python {version}: the pinned requirements resolve to wheels.")
            else:
                failed = True
                print(f"Python {version}: the pinned requirements do NOT resolve:\n{output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
