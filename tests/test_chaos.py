"""The short chaos run: the service under load while its processes are killed (SIGKILL) and its
embedded PostgreSQL's postmaster is killed; nothing accepted is lost or duplicated, nothing is
left stuck, and each fault is healed within seconds. The long run is ``bench/chaos.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from django.conf import settings


def test_chaos_loses_duplicates_and_strands_nothing_and_heals_each_fault() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}

    finished = subprocess.run(
        [
            sys.executable,
            "bench/chaos.py",
            "--tenants",
            "8",
            "--seconds",
            "40",
            "--faults",
            "4",
            "--echo-ms",
            "200",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    summary_line = [line for line in finished.stdout.splitlines() if line.startswith("CHAOS ")]
    assert summary_line, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads(summary_line[-1].removeprefix("CHAOS "))
    assert summary["problems"] == [], summary
    assert finished.returncode == 0
    assert summary["accepted"] > 50
    assert (summary["lost"], summary["duplicated"]) == (0, 0)
    assert summary["conversations_with_gaps"] == 0
    assert summary["threads_unfinished"] == summary["threads_with_two_replies"] == 0
    assert summary["jobs_stuck"] == summary["documents_unindexed"] == 0
    assert [fault["fault"] for fault in summary["faults"]] == [
        "web",
        "turns",
        "database",
        "background",
    ]
    assert all(
        fault["reply_s"] is not None and fault["reply_s"] < 30 for fault in summary["faults"]
    )
    # The turns the killed turn worker was running resume on its replacement at once.
    [turns] = [fault for fault in summary["faults"] if fault["fault"] == "turns"]
    assert turns["interrupted_reply_max_s"] is None or turns["interrupted_reply_max_s"] <= 10
