"""Rendering analysis results (terminal tables) and `optlab report` (one HTML file)."""

from __future__ import annotations

import math
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def render_result(result: Any, console: Any) -> None:
    from rich.table import Table

    console.print(f"{result.analysis} - study {result.study}, metric {result.metric}",
                  style="bold", markup=False)
    for key, value in result.findings.items():
        console.print(f"{key}: {_cell(value)}", markup=False)
    for name, rows in result.tables.items():
        if not rows:
            console.print(f"{name}: no rows", markup=False)
            continue
        table = Table(title=name, title_justify="left")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        console.print(table)
    for item in result.left_out:
        ids = ", ".join(item["run_ids"][:5]) + (", ..." if len(item["run_ids"]) > 5 else "")
        console.print(f"left out: {item['runs']} run(s), {item['reason']} ({ids})",
                      markup=False)
