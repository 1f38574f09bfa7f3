"""The `optlab` command: a thin layer that wires the stages and formats their output.

One module per command. Errors from the library are one line on stderr (`Error: ...`),
exit 1 (2 for usage); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from optlab.cli import (
    analyze,
    common,
    export,
    merge,
    plot,
    plugins,
    query,
    rebuild,
    report,
    rm,
    run,
    serve,
    show,
    status,
    train,
    weights,
)

app = typer.Typer(
    name="optlab",
    help="A laboratory for optimizer science: run studies, query and plot their results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", envvar="OPTLAB_DEBUG", help="Show tracebacks instead of one-line errors."
    ),
) -> None:
    common.STATE.debug = debug


def _register() -> None:

    for module in (
        run,
        train,
        show,
        status,
        query,
        analyze,
        report,
        export,
        weights,
        rm,
        rebuild,
        merge,
        plugins,
        serve,
    ):
        app.command(name=module.NAME, help=module.HELP)(module.command)
    app.add_typer(plot.app, name="plot")


_register()


def main() -> None:
    sys.exit(app())
