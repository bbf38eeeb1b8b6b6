"""The HTTP layer of the gateway: each route a few lines over :class:`Gateway`."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Generator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from saferoom import __version__
from saferoom.audit import now, read
from saferoom.errors import AccessDenied, AuthError, NotFound, SaferoomError, UsageError
from saferoom.server.gateway import Gateway
from saferoom.server.streams import BODIES, MEDIA, Outcome, error_body

Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


class QueryRequest(BaseModel):
    sql: str = Field(description="One read-only SQL statement.")
    role: str | None = Field(default=None, description="Act as this role (default: the user's first).")
    format: str | None = Field(default=None, description="arrow (default), json or csv.")


class ExplainRequest(BaseModel):
    sql: str
    role: str | None = None


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="saferoom gateway", version=__version__, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(SaferoomError)
    async def saferoom_error(_request: Request, exc: SaferoomError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)

    @app.get("/healthz", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok", "policy": gateway.policy.hash}

    @app.get("/v1/whoami", summary="Who the token belongs to and the role it acts as")
    def whoami(authorization: Auth = None, role: str | None = None) -> dict[str, Any]:
        identity = gateway.identify(authorization)
        session = gateway.session(identity, role)
        roles = gateway.policy.user(identity.user).roles
        return {"user": session.user, "role": session.role, "roles": roles, "audit": gateway.may_audit(session)}

    @app.get("/v1/tables", summary="The catalog as the caller sees it")
    def tables(authorization: Auth = None, role: str | None = None) -> list[dict[str, Any]]:
        return [t.to_dict() for t in gateway.session(gateway.identify(authorization), role).tables()]

    @app.post("/v1/explain", summary="What a query will see, column by column")
    def explain(request: ExplainRequest, authorization: Auth = None) -> dict[str, Any]:
        return gateway.session(gateway.identify(authorization), request.role).explain(request.sql).to_dict()

    @app.post("/v1/query", summary="Run a guarded query; an Arrow IPC stream by default, JSON or CSV on request",
              responses={200: {"content": {MEDIA["arrow"]: {}, MEDIA["json"]: {}, MEDIA["csv"]: {}}}})
    def query(request: Annotated[QueryRequest, Body()], authorization: Auth = None,
              accept: Annotated[str | None, Header()] = None) -> Response:
        identity = gateway.identify(authorization)
        session = gateway.session(identity, request.role)
        kind = _format(request.format, accept)
        started = time.perf_counter()
        result, decision = gateway.start(session, request.sql, identity)
        body = _stream(gateway, result, decision, kind, started)
        headers = {"X-Saferoom-Request": decision["request_id"]}
        first = next(body, b"")
        rest = next(body, None)
        if rest is None:  # a small result is already whole: send it without streaming machinery
            return Response(first, media_type=MEDIA[kind], headers=headers)
        return _ClosingStream(_Body([first, rest], body), media_type=MEDIA[kind], headers=headers)

    @app.get("/v1/audit", summary="The audit log (roles with audit: true)")
    def audit(authorization: Auth = None, role: str | None = None,
              limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict[str, Any]]:
        session = gateway.session(gateway.identify(authorization), role)
        if not gateway.may_audit(session):
            raise AccessDenied(f"role `{session.role}` may not read the audit log; roles with `audit: true` may")
        return read(gateway.state, limit)

    @app.get("/simple/", summary="The offline package index (PEP 503); pip's Basic auth with the token as password")
    @app.get("/simple/{project}/", summary="One project's files in the package index")
    def simple(authorization: Auth = None, project: str | None = None, accept: Annotated[str | None, Header()] = None) -> Response:
        gateway.identify(authorization)
        page = "index.json" if "application/vnd.pypi.simple.v1+json" in (accept or "") else "index.html"
        media = "application/vnd.pypi.simple.v1+json" if page == "index.json" else "text/html"
        folder = _package_path(gateway, "simple", *([project] if project else []))
        return FileResponse(folder / page, media_type=media)

    @app.get("/files/{filename}", summary="A wheel from the offline package index")
    def package_file(filename: str, authorization: Auth = None) -> Response:
        identity = gateway.identify(authorization)
        path = _package_path(gateway, "files", filename)
        gateway.audit.append_later({"event": "package", "time": now(), "user": identity.user, "file": filename})
        return FileResponse(path, media_type="application/octet-stream")

    html = resources.files("saferoom.server").joinpath("static/index.html").read_text()
    page_headers = {"Content-Security-Policy": _page_policy(html)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> Response:
        return HTMLResponse(html, headers=page_headers)

    app.add_middleware(_SecurityHeaders)
    return app


def _page_policy(html: str) -> str:
    """The web page may run only its own script (by hash) and talk only to this gateway."""
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class _SecurityHeaders:
    """Every response: never cached (results are data), never sniffed, framed or followed by a referrer."""

    HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"))

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
                if not any(k == b"content-security-policy" for k, _ in message["headers"]):
                    message["headers"].append((b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))
            await send(message)

        await self.app(scope, receive, sending)


class _Body:
    """A streamed body whose generator is closed for certain however the response ends: its ``finally`` gives back
    the user's query slot and writes the result record. (Starlette leaves an abandoned body to the garbage
    collector, so a client hanging up mid-stream kept its slot indefinitely.)"""

    def __init__(self, ready: list[bytes], rest: Generator[bytes, None, None]) -> None:
        self._ready, self._rest = ready, rest
        self._lock = threading.Lock()  # close() waits for a next() still running in the threadpool

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        with self._lock:
            return self._ready.pop(0) if self._ready else next(self._rest)

    def close(self) -> None:
        with self._lock:
            self._rest.close()


class _ClosingStream(StreamingResponse):
    def __init__(self, body: _Body, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._body.close)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _package_path(gateway: Gateway, *parts: str) -> Path:
    """A file of the latest snapshot; names are checked so no request can leave it."""
    if gateway.packages is None:
        raise UsageError("this gateway serves no package index (start it with --packages DIR)")
    if not all(_SAFE_NAME.match(p) for p in parts[1:]):
        raise UsageError("not a package or file name")
    path = gateway.packages / "latest" / Path(*parts)
    if not path.exists():
        raise NotFound(f"{'/'.join(parts[1:]) or 'the index'} is not in the package snapshot")
    return path


def _format(requested: str | None, accept: str | None) -> str:
    if requested:
        if requested not in BODIES:
            raise UsageError(f"format {requested!r} is not one of arrow, json, csv")
        return requested
    accept = accept or ""
    return "json" if "application/json" in accept else "csv" if "text/csv" in accept else "arrow"


def _stream(gateway: Gateway, result: Any, decision: dict[str, Any], kind: str, started: float):  # type: ignore[no-untyped-def]
    outcome = Outcome()
    try:
        yield from BODIES[kind](result, outcome)
    finally:
        gateway.release(decision["user"])
        truncated = bool(getattr(result, "_truncated", False))
        gateway.finish(decision, rows=outcome.rows, size=outcome.bytes, started=started, truncated=truncated, error=outcome.error)
