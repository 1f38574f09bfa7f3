"""Reading the store with SQL: read-only, one line per SQL error, several output formats."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import duckdb

from optlab.errors import OptlabError
from optlab.store import views
from optlab.store.core import reading

FORMATS = ("table", "csv", "json", "markdown")


# PRAGMAs that only read (the others change settings, some of which write files).
READ_PRAGMAS = (
    "table_info",
    "show_tables",
    "show_tables_expanded",
    "show",
    "database_size",
    "database_list",
    "version",
    "platform",
    "storage_info",
    "functions",
    "collations",
    "metadata_info",
    "user_agent",
)
_WHY = {
    "COPY": "COPY ... TO writes a file (export with `optlab export` or --out instead)",
    "EXPORT": "EXPORT DATABASE writes files (use `optlab export`)",
    "LOAD": "INSTALL and LOAD fetch and load extensions",
    "ATTACH": "ATTACH can create a database file",
    "SET": "SET changes settings (some of which write files)",
}
_EXPLAIN = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+)?", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*pragma\s+(\w+)", re.IGNORECASE)


def check_reads_only(sql: str) -> None:
    """Refuse, before anything runs, every statement that could write anything anywhere:
    only SELECT (with DESCRIBE, SHOW, SUMMARIZE), EXPLAIN of those, and reading PRAGMAs run."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise OptlabError(f"SQL: {one_line(str(e))}") from None
    if not statements:
        raise OptlabError(
            "SQL: nothing to run; give a statement, such as select * from runs limit 5"
        )
    for statement in statements:
        try:
            kind = statement.type.name
        except ValueError:  # a kind this duckdb's Python enum does not name (UPDATE EXTENSIONS)
            kind = "UNKNOWN"
        text = statement.query
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs what it explains
            check_reads_only(_EXPLAIN.sub("", text, count=1))
            continue
        if kind == "SELECT":
            continue
        if kind == "PRAGMA":
            m = _PRAGMA.match(text)
            if m and m.group(1).lower() in READ_PRAGMAS:
                continue
        why = _WHY.get(kind, "it would change the store or write elsewhere")
        first = " ".join(text.split())[:60]
        raise OptlabError(
            f"SQL: {first!r} refused: optlab query only reads (SELECT, DESCRIBE, "
            f"SHOW, SUMMARIZE, EXPLAIN, PRAGMA table_info); {why}"
        )


def run_sql(store: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Every row of one read-only statement (what `optlab query` prints)."""
    columns, rows, _ = sql_rows(store, sql)
    return columns, rows


def sql_rows(
    store: Path, sql: str, keep: int | None = None, seconds: float | None = None
) -> tuple[list[str], list[tuple[Any, ...]], int]:
    """(columns, the first ``keep`` rows (all without it), how many rows there are) of one
    read-only statement; the rows past ``keep`` are counted, never held. With ``seconds``,
    a statement still running then is interrupted: one line, and the store is let go."""
    check_reads_only(sql)
    try:
        count = len(duckdb.extract_statements(sql))
    except duckdb.Error as e:
        raise OptlabError(f"SQL: {one_line(str(e))}") from None
    if count > 1:  # DuckDB would show the last result alone, and say nothing of the rest
        raise OptlabError(
            f"SQL: {count} statements; optlab query runs one and prints its result: give "
            "each in its own call"
        )
    with reading(store) as con:
        views.ensure_readable(con)
        timer = threading.Timer(seconds, con.interrupt) if seconds else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            cur = con.execute(sql)
            if cur.description is None:
                return [], [], 0
            columns = [d[0] for d in cur.description]
            rows = cur.fetchall() if keep is None else cur.fetchmany(keep)
            total = len(rows)
            while keep is not None and (more := len(cur.fetchmany(10_000))):
                total += more
        except duckdb.InterruptException:
            raise OptlabError(
                f"SQL: stopped after {seconds:g} s, the limit here; narrow the statement, or "
                "run it with optlab query"
            ) from None
        except duckdb.Error as e:
            raise OptlabError(f"SQL: {one_line(str(e))}") from None
        finally:
            if timer is not None:
                timer.cancel()
    return columns, rows, total


def one_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    head = lines[0] if lines else message
    where = next((ln for ln in lines if ln.startswith("LINE ")), None)
    return f"{head} ({where})" if where else head


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[("" if v is None else v) for v in row] for row in rows])
        return buf.getvalue()
    if fmt == "json":
        return (
            json.dumps(
                [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows],
                indent=1,
            )
            + "\n"
        )
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    return _plain_table(columns, rows)


def _plain_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"
