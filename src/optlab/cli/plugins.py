"""optlab plugins: what is registered, by whom, and its parameters."""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from optlab.cli.common import err, handles_errors, out, printable
from optlab.errors import ConfigError, UsageError
from optlab.plugins.registry import GROUPS, default_registry, unknown_name_message

NAME = "plugins"
HELP = "List registered plugins: name, kind, distribution, description and parameters."


@handles_errors
def command(
    kind: str = typer.Argument(
        None,
        help="Only this kind: dataset, model, optimizer, "
        "lr_schedule, batch_schedule, augmentation, probe, executor.",
        show_default=False,
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object for tools: {plugins: [...], errors: [...]}."
    ),
) -> None:

    registry = default_registry()
    if kind is not None and kind not in GROUPS:
        raise UsageError(unknown_name_message("plugin kind", kind, list(GROUPS)))
    broken: list[str] = []
    found = []
    for k in [kind] if kind else list(GROUPS):
        for name in registry.names(k):
            try:
                found.append(registry.describe(k, name))
            except ConfigError as e:
                broken.append(str(e))
    if as_json:
        print(
            json.dumps({"plugins": [info.as_json() for info in found], "errors": broken}, indent=1)
        )
        if broken:
            raise typer.Exit(1)
        return
    for info in found:
        out.print(
            f"{info.kind} [bold]{info.name}[/bold] ({info.distribution}): "
            f"{escape(info.plugin.description)}"
        )
        for pname, ptype, default, text in info.param_rows():
            about = f"  # {text}" if text else ""
            out.print(f"    {pname}: {ptype} = {default}{about}", markup=False)
    if broken:
        for message in broken[1:]:
            err.print(f"Error: {printable(message)}", markup=False)
        raise ConfigError(broken[0])
