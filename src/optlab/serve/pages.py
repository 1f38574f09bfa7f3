"""The pages' HTML: one shell, its content drawn and kept up to date by ``static/app.js``
(and a study's bench by ``static/bench.js``) from the JSON API (no reload)."""

from __future__ import annotations

import html
import json
from pathlib import Path

TITLES = {"studies": "studies", "study": "study", "run": "run", "sql": "SQL"}

SHELL = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>optlab: {title}</title>
<link rel="stylesheet" href="/static/style.css">
<script>
window.optlabErrors = [];
window.addEventListener("error", (e) => window.optlabErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.optlabErrors.push(String(e.reason)));
</script>
{vega}
</head>
<body data-page="{page}" data-arg="{arg}">
<nav><a href="/">studies</a> <a href="/sql">SQL</a>
<span class="store">{store}</span>
<span id="conn" class="conn"></span></nav>
<main id="main"><p class="muted">loading...</p></main>
<script>window.optlab = {config};</script>
<script src="/static/bench.js"></script>
<script src="/static/app.js"></script>
</body>
</html>
"""


def page(name: str, arg: str, store: Path) -> str:
    """The shell of page ``name`` (studies, study, run, sql) for ``arg`` (a study's name,
    a run's id)."""
    charts = name in ("study", "run")
    return SHELL.format(
        title=html.escape(f"{TITLES[name]} {arg}".strip()),
        vega='<script src="/static/vega.js"></script>' if charts else "",
        page=name,
        arg=html.escape(arg),
        store=html.escape(str(store)),
        config=json.dumps({"page": name, "arg": arg}).replace("</", "<\\/"),
    )
