"""optlab serve: the store as a live page in the browser."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import typer

from optlab.cli.common import StoreOption, fail, handles_errors, out
from optlab.errors import OptlabError
from optlab.serve.app import create_app
from optlab.store.core import reading
from optlab.store.folding import open_submissions
from optlab.store.opening import PACE

NAME = "serve"
HELP = (
    "The store as a live page in the browser: studies, a study's runs, charts and analyses, "
    "a run, SQL; it updates while studies run. Ctrl-C stops it."
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACE = 2  # seconds Ctrl-C waits for requests still being answered
NICE = 10  # how far below other processes the server runs (os.nice)
FOLD_EVERY = 15.0  # seconds between folds of Slurm jobs' journals while they run


@handles_errors
def command(
    port: int = typer.Option(8765, "--port", help="The port to listen on."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="The address to listen on; another than this machine's own needs a token.",
    ),
    token: str = typer.Option(
        None,
        "--token",
        help="The token every request must carry (default: one is made and printed when "
        "--host is not this machine's own).",
        show_default=False,
    ),
    store: Path = StoreOption,
) -> None:
    import uvicorn  # the web server: a tenth of a second to import, for this command only

    if token is not None and not token.strip():
        raise fail(
            "--token: empty (an unset variable?); give a token, or leave --token out and one "
            "is made and printed",
            2,
        )

    try:
        with reading(store):
            pass  # a store that is missing, foreign or newer: said before anything starts
    except OptlabError as e:
        raise fail(str(e), 2) from None
    if token is None and host not in LOOPBACK:
        token = secrets.token_urlsafe(16)
    listening = _listen(host, port)
    address = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    out.print(f"optlab serve: {address} (store {store}); Ctrl-C stops it", markup=False)
    if token:
        out.print(
            "every request must carry this token: the page can read files through SQL",
            markup=False,
        )
    PACE.start()  # its reads paced, so that a running study's writer finds the store free
    # Below training in the CPU's queue: on a machine that also trains, the pages wait for
    # a busy core rather than the study (BENCHMARKS (y)).
    with contextlib.suppress(AttributeError, OSError):
        os.nice(NICE)
    # Ctrl-C stops it within seconds whatever the pages asked: a statement is cut off after
    # SQL_SECONDS, and requests still open after GRACE are not waited for.
    config = uvicorn.Config(
        create_app(store, token), log_level="warning", timeout_graceful_shutdown=GRACE
    )
    server = uvicorn.Server(config)
    stop = threading.Event()
    threading.Thread(target=_fold_while_jobs_run, args=(store, stop), daemon=True).start()
    # Ctrl-C is how it is meant to stop (uvicorn raises the interrupt again once down).
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listening])
    stop.set()
    out.print("optlab serve: stopped", markup=False)


def _fold_while_jobs_run(store: Path, stop: threading.Event) -> None:
    """While Slurm jobs train the store's runs, their journals are folded in every
    FOLD_EVERY seconds, so that the page follows them. In a process of its own: this one
    holds the store read-only, and DuckDB opens a file one way per process."""
    code = "import sys; from pathlib import Path; from optlab.store.folding import fold; "
    code += "fold(Path(sys.argv[1]))"
    while not stop.wait(FOLD_EVERY):
        if open_submissions(store):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [sys.executable, "-c", code, str(store)], capture_output=True, timeout=120
                )


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or one line (exit 2) for a port in use or an address that is
    not this machine's."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OverflowError:
        raise fail(f"--port {port}: give a port from 1 to 65535", 2) from None
    except OSError as e:
        if e.errno == 98:  # EADDRINUSE
            raise fail(f"--port {port}: in use on {host}; give another with --port", 2) from None
        raise fail(f"--host {host} --port {port}: cannot listen there: {e.strerror}", 2) from None
    return sock
