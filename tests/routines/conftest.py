from __future__ import annotations

from pathlib import Path

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.routines.helpers import T0, clock_set


@pytest.fixture
def clock(settings: SettingsWrapper, tmp_path: Path) -> Path:
    """The scheduler's clock, a file set to T0; move it with ``clock_set``."""
    path = tmp_path / "clock"
    clock_set(path, T0)
    settings.ROUTINE_CLOCK_FILE = path
    return path
