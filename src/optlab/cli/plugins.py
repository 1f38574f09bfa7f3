"""optlab plugins: what is registered, by whom, and its parameters."""

from __future__ import annotations

import typer

from optlab.cli.common import err, handles_errors, out, printable
from optlab.errors import ConfigError, UsageError

NAME = "plugins"
HELP = "List registered plugins: name, kind, distribution, description and parameters."


@handles_errors
def command(
    kind: str = typer.Argument(None, help="Only this kind: dataset, model, optimizer, "
                               "lr_schedule, batch_schedule, augmentation, probe, executor.",
                               show_default=False),
) -> None:
    from rich.markup import escape

    from optlab.registry import GROUPS, default_registry, unknown_name_message

    registry = default_registry()
    if kind is not None and kind not in GROUPS:
        raise UsageError(unknown_name_message("plugin kind", kind, list(GROUPS)))
    broken: list[str] = []
    for k in [kind] if kind else list(GROUPS):
        for name in registry.names(k):
            try:
                info = registry.describe(k, name)
            except ConfigError as e:
                broken.append(str(e))
                continue
            out.print(f"{k} [bold]{name}[/bold] ({info.distribution}): "
                      f"{escape(info.plugin.description)}")
            for pname, ptype, default in info.param_rows():
                out.print(f"    {pname}: {ptype} = {default}", markup=False)
    if broken:
        for message in broken[1:]:
            err.print(f"Error: {printable(message)}", markup=False)
        raise ConfigError(broken[0])
