"""A separate OS process playing an external engine (`python -m` this module).

Waits for ``go`` on stdin (so a test releases several together), then claims threads with
``POST threads/next`` until there are none, and prints the claimed thread ids as JSON.
"""

from __future__ import annotations

import json
import sys
import urllib.request


def main() -> None:
    base, key, worker_id = sys.argv[1:4]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    claimed: list[dict[str, str]] = []
    while True:
        request = urllib.request.Request(
            f"{base}/api/v1/threads/next",
            data=json.dumps({"worker_id": worker_id, "lease_seconds": 60}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status == 204:
                break
            body = json.loads(response.read())
        claimed.append({"thread_id": body["thread"]["id"], "user_id": body["user_id"]})
    print(json.dumps(claimed), flush=True)


if __name__ == "__main__":
    main()
