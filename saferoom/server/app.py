"""The HTTP layer of the gateway: each route a few lines over :class:`Gateway`."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from saferoom import __version__
from saferoom.audit import now
from saferoom.engines.base import Cancel
from saferoom.errors import AccessDenied, AuthError, NotFound, SaferoomError, TooLarge, UsageError
from saferoom.server.gateway import Gateway, Running
from saferoom.server.pages import MAX_PAGE_ROWS, PAGE_ROWS
from saferoom.server.requests_api import UPLOAD, add_request_routes
from saferoom.server.streams import BODIES, MEDIA, Outcome, error_body, json_body, vectors_body
from saferoom.server.workers import QueryThread

T = TypeVar("T")
Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


class QueryRequest(BaseModel):
    sql: str = Field(description="One read-only SQL statement.")
    role: str | None = Field(default=None, description="Act as this role (default: the user's first).")
    format: str | None = Field(default=None, description="arrow (default), json, vectors (binary column by column, for clients "
                               "without Arrow such as R), csv, or page: the result kept by the "
                               "gateway and the first page of it sent as JSON, the next pages from /v1/results/{id}.")
    page_size: int = Field(default=PAGE_ROWS, ge=1, le=MAX_PAGE_ROWS, description="The first page's rows (format page).")


class ExplainRequest(BaseModel):
    sql: str
    role: str | None = None


def create_app(gateway: Gateway, door: bool = False) -> FastAPI:
    """The routes over ``gateway``; ``door``: served on a Unix socket whose result door (server/door.py) clients may use."""
    app = FastAPI(title="saferoom gateway", version=__version__, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(SaferoomError)
    async def saferoom_error(_request: Request, exc: SaferoomError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(UsageError(str(exc.detail))), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body that is not the documented shape: the same error shape as everything else, no echo of the input."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return JSONResponse(error_body(UsageError(f"the request is not what this endpoint takes: {problems}")), status_code=422)

    @app.get("/healthz", summary="Liveness")
    async def health() -> dict[str, str]:  # on the event loop: it answers however busy the query threads are
        return {"status": "ok", "policy": gateway.policy.hash}

    @app.get("/v1/whoami", summary="Who the token belongs to and the role it acts as")
    def whoami(authorization: Auth = None, role: str | None = None) -> dict[str, Any]:
        identity = gateway.identify(authorization)
        session = gateway.session(identity, role)
        roles = session.policy.user(identity.user).roles  # with the roles granted for a while
        return {"user": session.user, "role": session.role, "roles": roles, "audit": gateway.may_audit(session),
                "dialect": session.dialect, "flight_sql": gateway.flight_sql_port, "door": door}

    @app.get("/v1/tables", summary="The catalog as the caller sees it")
    def tables(authorization: Auth = None, role: str | None = None) -> list[dict[str, Any]]:
        return [t.to_dict() for t in gateway.session(gateway.identify(authorization), role).tables()]

    @app.post("/v1/explain", summary="What a query will see, column by column")
    def explain(request: ExplainRequest, authorization: Auth = None) -> dict[str, Any]:
        return gateway.session(gateway.identify(authorization), request.role).explain(request.sql).to_dict()

    @app.post("/v1/query", summary="Run a guarded query; an Arrow IPC stream by default, JSON or CSV on request",
              responses={200: {"content": {MEDIA["arrow"]: {}, MEDIA["json"]: {}, MEDIA["csv"]: {}}}})
    async def query(request: Request, payload: Annotated[QueryRequest, Body()], authorization: Auth = None,
                    accept: Annotated[str | None, Header()] = None) -> Response:
        kind = _format(payload.format, accept)
        cancel, worker = Cancel(), QueryThread()
        try:
            running, stream = await _watching(request, cancel, worker, lambda: begin(gateway, payload, authorization, kind, cancel))
        except BaseException:
            worker.close()
            raise
        body = _Body(stream, cancel, worker)
        try:  # the first reads can take long (a kept result is written whole): a client that leaves cancels them
            first, rest = await _watching(request, cancel, worker, lambda: (body.next(), body.next()))
        except BaseException:
            await body.aclose()
            raise
        headers = {"X-Saferoom-Request": running.request_id}
        if rest is None:  # a small result is already whole: send it without streaming machinery
            await body.aclose()
            return Response(first or b"", media_type=MEDIA[kind], headers=headers)
        return _ClosingStream(body.then([first or b"", rest]), running.stall, media_type=MEDIA[kind], headers=headers)

    @app.get("/v1/results/{result_id}", summary="A page of a result kept for the web page (format page)")
    def result_page(result_id: str, authorization: Auth = None, role: str | None = None,
                    offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ROWS)] = PAGE_ROWS) -> dict[str, Any]:
        session = gateway.session(gateway.identify(authorization), role)
        return gateway.pages.page(session.user, session.role, session.policy.hash, result_id, offset, limit)

    @app.delete("/v1/results", summary="Forget the caller's kept results (the web page's sign-out)")
    def drop_results(authorization: Auth = None) -> dict[str, int]:
        identity = gateway.identify(authorization)  # a token bound to a role forgets only that role's results
        return {"dropped": gateway.pages.drop(identity.user, identity.role)}

    @app.get("/v1/audit", summary="The audit log (roles with audit: true)")
    def audit(authorization: Auth = None, role: str | None = None,
              limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict[str, Any]]:
        session = gateway.session(gateway.identify(authorization), role)
        if not gateway.may_audit(session):
            raise AccessDenied(f"role `{session.role}` may not read the audit log; roles with `audit: true` may")
        return gateway.store.read_audit(limit)

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

    static = _static_files()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> Response:
        return HTMLResponse(static["index.html"][0], headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static or name == "index.html":  # only the page's own files, named one by one
            raise NotFound(f"{name} is not one of the page's files")
        content, media = static[name]
        return Response(content, media_type=media, headers={"Content-Security-Policy": PAGE_POLICY})

    add_request_routes(app, gateway)
    app.add_middleware(_BodyLimit, limit=body_limit(gateway.max_sql_bytes))
    app.add_middleware(_SecurityHeaders)
    return app


def body_limit(max_sql_bytes: int) -> int:
    """The largest request body: a query at the limit, JSON-escaped at worst (\\u0000 is six bytes a byte), and room for the rest."""
    return 6 * max_sql_bytes + 64 * 1024


class _BodyLimit:
    """Refuse a body past ``limit`` bytes with 413 while it is read, before any route (or token check) sees it.

    A declared Content-Length over the limit is refused unread; any other body is read here, counted as it
    arrives and refused when it passes the limit, so no request holds more than ``limit`` bytes of memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "PUT" and UPLOAD.match(scope["path"]):  # an upload: its route streams it to disk, capped
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        body = await _read_at_most(receive, self.limit)
        if body is None:
            await _too_large(send, self.limit)  # (a client that already left is not answered: the send is dropped)
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_at_most(receive: Any, limit: int) -> bytes | None:
    """The whole body, or None past ``limit`` or when the client leaves first."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """The body as one message, then the connection's own messages (a disconnect, for instance)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replaying() -> Any:
        return pending.pop() if pending else await receive()

    return replaying


async def _too_large(send: Any, limit: int) -> None:
    body = error_body(TooLarge(f"the request body is over {limit:,} bytes, the most this gateway accepts"))
    response = JSONResponse(body, status_code=TooLarge.http_status, headers={"Connection": "close"})
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}


# The web page may run only the gateway's own scripts (no inline script, no eval), and talk only to this gateway.
# Inline styles are allowed: the editor sets its own.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "requests.js": "text/javascript; charset=utf-8",
          "editor.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "editor.LICENSES.txt": "text/plain; charset=utf-8"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: their content and media type."""
    folder = resources.files("saferoom.server").joinpath("static")
    return {name: (folder.joinpath(name).read_bytes(), media) for name, media in STATIC.items()}


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


async def _watching(request: Request, cancel: Cancel, worker: QueryThread, work: Callable[[], T]) -> T:
    """Run ``work`` on the query's thread; if the client hangs up meanwhile, cancel its query."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_hang_up, request, cancel)
        try:
            result = await worker.run(work)
        except Exception as exc:  # noqa: BLE001 - raised below, outside the group, so it is not wrapped in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


async def _hang_up(request: Request, cancel: Cancel) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel("the client hung up")


def begin(gateway: Gateway, payload: QueryRequest, authorization: str | None, kind: str,
           cancel: Cancel) -> tuple[Running, Generator[bytes, None, None]]:
    identity = gateway.identify(authorization)
    session = gateway.session(identity, payload.role)
    running = gateway.start(session, payload.sql, identity, cancel)
    return running, _stream(gateway, running, kind, (session.policy.hash, payload.page_size))


class _Body:
    """A result body read on its query's thread, closed for certain however the response ends: the generator's
    ``finally`` gives back the user's query slot and writes the result record. A client that hangs up before
    the end has its query cancelled first, so closing never waits for a query nobody will read."""

    def __init__(self, rest: Generator[bytes, None, None], cancel: Cancel, worker: QueryThread) -> None:
        self._ready: list[bytes] = []
        self._rest, self._cancel, self._worker = rest, cancel, worker
        self._done = False

    def then(self, ready: list[bytes]) -> _Body:
        """Send ``ready`` (chunks already read) before the rest."""
        self._ready = ready
        return self

    async def read(self) -> bytes | None:
        return await self._worker.run(self.next)

    def next(self) -> bytes | None:
        """The next chunk, read on the calling thread (the query's)."""
        if self._ready:
            return self._ready.pop(0)
        chunk = next(self._rest, None)
        self._done = chunk is None
        return chunk

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def stalled(self) -> None:
        self._cancel("the client stopped reading its result")

    async def aclose(self) -> None:
        if not self._done:
            self._cancel("the client hung up")
        await self._worker.run(self._rest.close)  # after a read still running: they share the query's thread
        self._worker.close()


class _ClosingStream(StreamingResponse):
    """A streamed result whose body is closed however the response ends, and whose client must take each chunk
    within ``stall`` seconds: one that stops reading (but keeps its connection) would otherwise hold its query,
    its slot and its worker for ever. Its query is then cancelled and the connection dropped."""

    def __init__(self, body: _Body, stall: float, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body, self._stall = body, stall

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def bounded(message: Any) -> None:
            with anyio.fail_after(self._stall):
                await send(message)

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:
            self._body.stalled()  # the connection is dropped: the response cannot end well
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()


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
        if requested not in MEDIA:
            raise UsageError(f"format {requested!r} is not one of arrow, json, vectors, csv, page")
        return requested
    accept = accept or ""
    return "json" if "application/json" in accept else "csv" if "text/csv" in accept else "arrow"


def _stream(gateway: Gateway, running: Running, kind: str, page: tuple[str, int]) -> Generator[bytes, None, None]:
    """The body of ``kind``; ``page`` is the policy's hash and the first page's size, for a kept result."""
    outcome = Outcome()
    result = running.result
    assert result is not None
    try:  # a JSON body carries the query's decision too, for the web page to show how each column was shaped
        if kind == "page":
            yield from gateway.pages.body(result, outcome, running.decision, *page)
        else:
            decided = {"json": json_body, "vectors": vectors_body}.get(kind)  # bodies that carry the decision
            yield from decided(result, outcome, running.decision) if decided else BODIES[kind](result, outcome)
    finally:
        gateway.finish(running, rows=outcome.rows, size=outcome.bytes, truncated=result.truncated_so_far or outcome.cut,
                       error=outcome.error)
