"""Summarise a run's trials as the dashboard's /api/runs/NAME/trials returns them (JSON on
standard input) for scripts/container_check.sh, and fail unless trials ran on at least two
hosts: in the compose set-up, the Ray head and the worker must both have trained."""

from __future__ import annotations

import json
import sys
from collections import Counter


def main() -> int:
    trials = json.load(sys.stdin)
    for column in ("status", "rung", "host"):
        counts = Counter(str(trial[column]) for trial in trials)
        print(f"trials by {column}: " + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))
    hosts = {trial["host"] for trial in trials if trial["status"] == "done"}
    if len(hosts) < 2:
        print(f"expected finished trials on two hosts, got {sorted(hosts)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
