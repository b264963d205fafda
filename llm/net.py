"""The servers' sockets (`llm serve`, `evo dashboard`): where to listen, and whether a
host is reachable only from this machine. Kept apart from the servers so that importing
it loads no torch: `evo dashboard` uses it and never needs a model."""

from __future__ import annotations

import ipaddress
import socket

from llm.errors import UserError


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn, so that a busy port is one clear error (uvicorn
    would log it and exit with status 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as err:
        raise UserError(f"cannot listen on {host}:{port}: {err}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
