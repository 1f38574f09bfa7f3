"""The live page's web application (Starlette): the pages, the JSON API they poll, their
scripts, and the token a server on another address than this machine's asks for.

Every API answer is read from the store when asked (the charts and analyses at most every
few seconds, the rest every second, whatever the number of pages open), through
:mod:`optlab.serve.data`: the store is held read-only for one short read at a time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from optlab.errors import OptlabError
from optlab.serve import data, tables
from optlab.serve.answers import SHARE, Answers
from optlab.serve.pages import page
from optlab.store.core import reading

COOKIE = "optlab_token"
# Seconds an answer is reused (others 1 s): what is slow to make or changes little.
# Answers whose queries are short, read through one opening of the store (the charts,
# analyses and profile let it go between their parts, so that a writer never waits long).
ONE_OPENING = {"studies", "study", "runs", "axes", "facts", "run", "epochs", "probes", "compare"}
FRESH = {"charts": 3.0, "analyses": 10.0, "profile": 10.0, "axes": 10.0, "facts": 10.0}


def create_app(store: Path, token: str | None = None, share: float = SHARE) -> Starlette:
    """The application serving ``store``; with ``token``, every request must carry it.
    ``share``: of one core, the most it spends making answers (kept ones are sent past it)."""
    answers = Answers(share)
    vega: dict[str, bytes] = {}

    def once(kind: str, request: Request, read: Callable[[Request], Any]) -> bytes:
        """The answer, encoded once however many pages are sent it."""
        if kind not in ONE_OPENING:
            return JSONResponse(read(request)).body
        with reading(store, require_runs=False):  # its reads share this one opening
            return JSONResponse(read(request)).body

    def api(kind: str, read: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            key = f"{request.url.path}?{request.url.query}"
            try:
                body, age = answers.get(
                    key, FRESH.get(kind, 1.0), lambda: once(kind, request, read)
                )
            except data.NotFound as e:
                return JSONResponse({"error": str(e)}, status_code=404)
            except OptlabError as e:  # the store gone or busy, a bad statement: said
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # noqa: BLE001 - the page says it; the server goes on
                first = (str(e).strip().splitlines() or [""])[0]
                error = f"unexpected {type(e).__name__}: {first}"
                return JSONResponse({"error": error}, status_code=500)
            return Response(
                body, media_type="application/json", headers={"X-Optlab-Age": f"{age:.1f}"}
            )

        return endpoint

    def show(name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            arg = request.path_params.get("arg", "")
            return HTMLResponse(page(name, arg, store))

        return endpoint

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "vega.js":
            if "bundle" not in vega:
                vega["bundle"] = _vega_bundle()
            return Response(vega["bundle"], media_type="text/javascript")
        if name not in ("app.js", "bench.js", "style.css"):
            return PlainTextResponse("no such file", status_code=404)
        body = resources.files("optlab.serve").joinpath("static", name).read_bytes()
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(body, media_type=kind)

    routes = [
        Route("/", show("studies")),
        Route("/study/{arg:path}", show("study")),
        Route("/run/{arg}", show("run")),
        Route("/sql", show("sql")),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        *_api_routes(store, api),
        Route("/api/sql", _sql_endpoint(store)),
    ]
    app = Starlette(routes=routes)
    if token is not None:
        app.add_middleware(_TokenCheck, token=token)
    app.add_middleware(_SameOrigin, loopback_only=token is None)
    return app


def _api_routes(store: Path, api: Callable[..., Any]) -> list[Route]:
    """The JSON API's paths but SQL's, each read through ``api`` (answers kept a moment)."""
    return [
        Route("/api/studies", api("studies", lambda r: data.studies(store))),
        Route(
            "/api/studies/{name}/runs",
            api(
                "runs",
                lambda r: tables.study_runs(
                    store, r.path_params["name"], tables.runs_query(r.query_params.multi_items())
                ),
            ),
        ),
        Route(
            "/api/studies/{name}/charts",
            api(
                "charts",
                lambda r: data.study_charts(
                    store, r.path_params["name"], r.query_params.get("metric")
                ),
            ),
        ),
        Route(
            "/api/studies/{name}/axes",
            api("axes", lambda r: tables.axis_values(store, r.path_params["name"])),
        ),
        Route(
            "/api/studies/{name}/facts",
            api("facts", lambda r: data.study_facts_for_page(store, r.path_params["name"])),
        ),
        Route(
            "/api/studies/{name}/profile",
            api(
                "profile",
                lambda r: data.study_profile(
                    store,
                    r.path_params["name"],
                    r.query_params.get("target", ""),
                    r.query_params.get("time", "steps"),
                    r.query_params.get("order", "median-then-best"),
                ),
            ),
        ),
        Route(
            "/api/studies/{name}/analyses",
            api("analyses", lambda r: data.study_analyses(store, r.path_params["name"])),
        ),
        Route(
            "/api/studies/{name}", api("study", lambda r: data.study(store, r.path_params["name"]))
        ),
        Route("/api/runs/{run_id}", api("run", lambda r: data.run(store, r.path_params["run_id"]))),
        Route(
            "/api/runs/{run_id}/epochs",
            api("epochs", lambda r: data.run_epochs(store, r.path_params["run_id"])),
        ),
        Route(
            "/api/runs/{run_id}/probes",
            api("probes", lambda r: data.run_probes(store, r.path_params["run_id"])),
        ),
        Route(
            "/api/compare",
            api("compare", lambda r: tables.compare(store, r.query_params.get("runs", ""))),
        ),
    ]


def _sql_endpoint(store: Path) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        statement = request.query_params.get("q", "")
        try:
            return JSONResponse(data.sql(store, statement))
        except OptlabError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    return endpoint


def _vega_bundle() -> bytes:
    """Vega, Vega-Lite and vega-embed, from where the report's come from (no network)."""
    import altair as alt  # altair and vl-convert: slow to import, so only when asked
    import vl_convert as vlc

    # vl-convert names Vega-Lite versions like "v6_4" (Altair's schema is "v6.4.1").
    version = "_".join(alt.SCHEMA_VERSION.split(".")[:2])
    return vlc.javascript_bundle(vl_version=version).encode()


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


class _SameOrigin:
    """Refuse (403, one line, before anything is read) what a web page elsewhere could
    send: with no token (this machine's own address), a ``Host`` other than a loopback
    name, as a page on another name that resolves here (DNS rebinding) sends; and, with
    or without one, an API request from another origin (its ``Origin``, or a browser's
    ``Sec-Fetch-Site: cross-site``). No CORS headers are ever sent."""

    def __init__(self, app: Any, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        why = self.refused(Request(scope))
        if why is None:
            await self.app(scope, receive, send)
            return
        await PlainTextResponse(f"403: {why}", status_code=403)(scope, receive, send)

    def refused(self, request: Request) -> str | None:
        host = request.headers.get("host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if self.loopback_only and name not in LOOPBACK_NAMES and f"[{name}]" not in LOOPBACK_NAMES:
            return f"Host {host!r} is not this server's address (it serves this machine only)"
        if not request.url.path.startswith("/api/"):
            return None
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return f"a request from {origin} to this server's API (another origin)"
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "a cross-site request to this server's API"
        return None


class _TokenCheck:
    """Refuse (401, before anything is read) a request that does not carry the token: in
    the address (``?token=``), a header (``X-Optlab-Token``) or the cookie the first page
    with it set."""

    def __init__(self, app: Any, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        cookie = unquote(request.cookies.get(COOKIE) or "")  # set percent-encoded below
        carried = given or request.headers.get("x-optlab-token") or cookie
        if not hmac.compare_digest(carried.encode(), self.token.encode()):
            refused = PlainTextResponse(
                "401: this optlab serve needs its token: open the address it printed "
                "(with ?token=...)",
                status_code=401,
            )
            await refused(scope, receive, send)
            return
        if given is None:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={quote(self.token)}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, with_cookie)
