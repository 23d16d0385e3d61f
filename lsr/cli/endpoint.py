"""The flags and the connection of every verb that talks to a running `lsr serve` (``query``, ``upsert``,
``delete``, ``beir``): one place for the address, TLS, the bearer token and the deadline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_endpoint_arguments(p: argparse.ArgumentParser, *, required: bool, timeout: float = 30.0) -> None:
    from lsr.cli.main import folder_argument

    p.add_argument("--endpoint", required=required, metavar="HOST[:PORT]",
                   help="where `lsr serve` listens (port 50051 if left out)")
    p.add_argument("--tls", nargs="?", const=True, default=False, metavar="CA_CERT",
                   help="use TLS (optionally trusting the given CA certificate)")
    p.add_argument("--auth-token-file", type=folder_argument, help="file holding the server's bearer token")
    p.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds of each call (default {timeout:g})")


def refuse_connection_flags(args: argparse.Namespace) -> None:
    """--tls, --auth-token-file and --timeout reach a server: a verb writing a collection folder refuses them."""
    from lsr.cli.main import flags_given, refuse_unused

    refuse_unused(flags_given(args, "tls", "auth_token_file", "timeout"),
                  "COLLECTION is a folder written here, not a server (--endpoint)")


def connect(args: argparse.Namespace) -> Any:
    """A ``Client`` to ``args.endpoint``, connected (EndpointUnavailable, one line, when no server answers)."""
    from lsr.service.client import CONNECT_TIMEOUT, Client, EndpointUnavailable

    token = read_token(args.auth_token_file)
    if isinstance(args.tls, str):  # a CA certificate: read by gRPC, whose errors name neither the flag nor the file
        check_file(Path(args.tls), "--tls")
    client = Client(args.endpoint, token=token, tls=args.tls, timeout=args.timeout)
    try:
        client.wait_ready(timeout=min(CONNECT_TIMEOUT, args.timeout))
    except EndpointUnavailable as exc:
        client.close()
        if args.timeout >= CONNECT_TIMEOUT or args.tls:  # over TLS it names a likelier cause: a plain server
            raise
        raise EndpointUnavailable(f"{exc} Or is --timeout {args.timeout:g} too short to connect?") from None
    except BaseException:
        client.close()
        raise
    return client


def check_file(path: Path, flag: str) -> None:
    """A file a flag names must be one: a folder or a missing path is one line naming the flag (a bare
    ``[Errno 21] Is a directory`` exited 1, as if the machine were at fault)."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")


def read_token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (--auth-token-file), stripped; None without one. A missing, folder, empty or
    non-UTF-8 file, or a token gRPC metadata cannot carry, is one line naming the flag (exit 2), for `lsr serve` and
    its clients alike."""
    if path is None:
        return None
    from lsr.files import read_text_file

    token = read_text_file(path, "--auth-token-file").strip()
    if not token:
        raise ValueError(f"--auth-token-file {path} is empty; write the bearer token into it")
    from lsr.service.client import token_problem

    problem = token_problem(token)  # checked here, where the flag is known: `lsr serve` too, else no client could call
    if problem is not None:
        raise ValueError(f"--auth-token-file {path} {problem}")
    return token
