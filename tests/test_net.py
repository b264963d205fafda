"""The servers' sockets (llm.net), shared by `llm serve` and `evo dashboard`."""

from __future__ import annotations

import pytest

from llm.errors import UserError
from llm.net import is_loopback, listening_socket


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_busy_port_is_one_user_error_naming_it() -> None:
    with listening_socket("127.0.0.1", 0) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)
