"""Environment Ray must see before it is first imported (it reads these once, at import).

Kept free of Ray imports so the CLI can call it first.
"""

from __future__ import annotations

import os
from pathlib import Path


def prepare(address: str | None) -> None:
    """Set Ray's process-wide switches for running embedded (address None) or joining `address`."""
    if not address or is_loopback(address):
        # 0 keeps every Ray process on 127.0.0.1; on Linux Ray otherwise binds the machine's
        # network address. Not for a remote --address: a driver joining a cluster must be
        # reachable from the other nodes.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address and not os.environ.get("RAY_AUTH_MODE") and token_available():
        # Ray 2.60 clusters check a token, and a client joining by address must switch token
        # mode on itself; a cluster without token auth ignores it.
        os.environ["RAY_AUTH_MODE"] = "token"


def token_available() -> bool:
    """RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray's own order)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def split_address(address: str) -> tuple[str, str]:
    """'ray://host:port' or 'host:port' -> (host, port); port is '' when there is none."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host, port


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")
