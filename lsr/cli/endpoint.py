"""The flags and the connection of every verb that talks to a running `lsr serve` (``query``, ``upsert``,
``delete``): one place for the address, TLS, the bearer token and the deadline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_endpoint_arguments(p: argparse.ArgumentParser, *, required: bool, timeout: float = 30.0) -> None:
    p.add_argument("--endpoint", required=required, metavar="HOST[:PORT]",
                   help="where `lsr serve` listens (port 50051 if left out)")
    p.add_argument("--tls", nargs="?", const=True, default=False, metavar="CA_CERT",
                   help="use TLS (optionally trusting the given CA certificate)")
    p.add_argument("--auth-token-file", type=Path, help="file holding the server's bearer token")
    p.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds of each call (default {timeout:g})")


def connect(args: argparse.Namespace) -> Any:
    """A ``Client`` to ``args.endpoint``, connected (EndpointUnavailable, one line, when no server answers)."""
    from lsr.service.client import CONNECT_TIMEOUT, Client

    token = args.auth_token_file.read_text(encoding="utf-8").strip() if args.auth_token_file else None
    client = Client(args.endpoint, token=token, tls=args.tls, timeout=args.timeout)
    try:
        client.wait_ready(timeout=min(CONNECT_TIMEOUT, args.timeout))
    except BaseException:
        client.close()
        raise
    return client
