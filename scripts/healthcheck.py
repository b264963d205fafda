"""The image's health check (Containerfile HEALTHCHECK, compose.yaml): GET a URL and exit 0
on a 2xx answer, 1 otherwise. The image has no curl, so Python's standard library it is.

The default URL is `llm serve`'s /health (the image's default command). The dashboard has
no open health route: its check asks for /api/runs with EVO_DASHBOARD_TOKEN, which is sent
as a bearer token whenever it is set."""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"
TIMEOUT_S = 4


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    request = urllib.request.Request(url)
    token = os.environ.get("EVO_DASHBOARD_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return 0 if 200 <= reply.status < 300 else 1
    except OSError as err:  # refused, timed out, or an HTTP error status
        print(f"unhealthy: {url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
