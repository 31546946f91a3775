"""A child of ``manage.py serve`` stops when serve dies, however it dies.

serve stops its children in order when it is asked to stop; SIGKILLed (or crashing), it can do
nothing, and its web processes would keep the port (``SO_REUSEPORT`` lets a new ``make run``
bind beside them) and its workers would keep claiming. So each child asks the kernel for a
SIGTERM when its parent dies (Linux's ``PR_SET_PDEATHSIG``) and then stops as on any SIGTERM:
turns handed back, the last user of the embedded PostgreSQL stopping it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

# Set by serve in its children's environment: the pid they must outlive no longer than.
SUPERVISOR_PID_ENV = "IRONCLAW_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_supervisor() -> None:
    """Under serve (``SUPERVISOR_PID_ENV`` set) on Linux: SIGTERM this process when serve dies.
    Elsewhere, nothing."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("cannot ask to stop with serve (prctl: %s)", os.strerror(ctypes.get_errno()))
        return
    if str(os.getppid()) != supervisor:
        # serve died before the request took effect: stop now, as its death would have said.
        os.kill(os.getpid(), signal.SIGTERM)
