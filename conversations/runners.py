"""Thread runners that ``THREAD_RUNNER`` can name. The reference runner lives in ``engine``."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def wait_for_external_engine(*, thread_id: str) -> None:
    """Do nothing: the thread stays ``created`` until an engine claims it over the REST API."""
    logger.info("thread %s is waiting for an external engine to claim it", thread_id)
