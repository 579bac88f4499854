"""`python -m finetune.review [--db traces.duckdb] [--port 8765]`: the review page over the store, on 127.0.0.1.

Checks everything a user can get wrong (no store there, a bad port, a port in use) before anything heavy loads: one
line, exit 2 (a missing or unreadable store included: the user's flag). Prints the URL with this
start's token; a request without it gets 403.
"""

from __future__ import annotations

import errno
import secrets
import socket
import sys

from store.cli import ArgumentParser, entry_point
from store.errors import UserError
from store.db import Store, check_path, default_path

HOST = "127.0.0.1"  # local only: the token keeps other local users' browsers out, the address keeps the network out


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UserError(f"--port must be a number from 1 to 65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {port}")
    return port


def _listen(port: int) -> socket.socket:
    """Bind the port now, so a port in use is one line before the server starts; uvicorn serves on this socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use on {HOST}; pass another with --port") from None
        raise UserError(f"cannot listen on {HOST}:{port}: {e.strerror or e}") from None
    return sock


@entry_point()
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m finetune.review",
                        description="A local review page over the store: runs, outputs, training, blind rating.")
    ap.add_argument("--db", help="the DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    ap.add_argument("--port", default="8765", help="the port on 127.0.0.1 (default 8765)")
    args = ap.parse_args(argv)
    port = _port(args.port)
    path = args.db or default_path()
    try:
        check_path(path)
        Store(path, create=False)  # no store there: one line, nothing created
    except UserError as e:  # a path the user gave: exit 2 here, whatever the store's own code for it
        raise UserError(str(e)) from None
    sock = _listen(port)
    token = secrets.token_urlsafe(24)

    import uvicorn

    from finetune.review.app import create_app

    print(f"review page: http://{HOST}:{sock.getsockname()[1]}/?token={token}", flush=True)
    config = uvicorn.Config(create_app(path, token), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
