"""The relay command's option types (mpesa_sync/commands/relay.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import click
import pytest

from mpesa_sync.commands.relay import HostPort

pytestmark = pytest.mark.no_database


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("db:1", ("db", 1))],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert HostPort().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1:99999", ":8080", "host:port"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not HOST:PORT"):
        HostPort().convert(text, None, None)
