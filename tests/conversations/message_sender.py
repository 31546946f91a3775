"""A separate OS process that sends one user message (`python -m` this module).

It sets Django up, opens its connection, prints ``ready`` and waits for ``go`` on stdin, so a test
can release many processes together; then it prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ironclaw_site.settings")
    import django

    django.setup()
    from django.db import connection

    from conversations.services import message_handle

    user_id, channel, content = sys.argv[1:4]
    try:
        connection.ensure_connection()
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        started = time.monotonic()
        result = message_handle(user_id=user_id, channel=channel, content=content)
        elapsed_ms = (time.monotonic() - started) * 1000
        print(
            json.dumps(
                {
                    "conversation_id": str(result.conversation_id),
                    "thread_id": str(result.thread_id),
                    "action": result.action,
                    "seq": result.seq,
                    "elapsed_ms": round(elapsed_ms, 1),
                }
            ),
            flush=True,
        )
    finally:
        connection.close()


if __name__ == "__main__":
    main()
