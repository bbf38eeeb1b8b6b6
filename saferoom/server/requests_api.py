"""The request engine's HTTP routes: each a few lines over :class:`saferoom.requests.Requests`.

Who asks is always the token's user (and role, for a token bound to one); nothing in a body names a user.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Header, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from saferoom.errors import UsageError
from saferoom.requests import Kind, Verdict
from saferoom.requests import Request as Asked
from saferoom.requests.preview import preview
from saferoom.server.gateway import Gateway

Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
UPLOAD = re.compile(r"^/v1/requests/rq_[0-9a-f]{20}/files/[^/]+$")  # streamed to disk by its route, not buffered
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field this route does not take (a "reviewer", say) is refused


class ReleaseBody(Body):
    reason: str = Field(max_length=4000)


class AccessBody(Body):
    reason: str = Field(max_length=4000)
    duration: str = Field(default="4h", max_length=20, description="How long, like 4h or 90m.")
    role: str | None = Field(default=None, max_length=200)
    column: str | None = Field(default=None, max_length=400, description="source.table.column")
    action: str = Field(default="allow", max_length=20)


class PackageBody(Body):
    requirement: str = Field(max_length=200, description="NAME or NAME==VERSION")
    reason: str = Field(max_length=4000)


class ReviewBody(Body):
    verdict: Verdict
    files: dict[str, str] = Field(default_factory=dict, description="name -> sha256 of each file as the reviewer saw it.")
    comment: str = Field(default="", max_length=4000)
    comments: dict[str, str] = Field(default_factory=dict, description="name -> a comment on that file.")


def add_request_routes(app: FastAPI, gateway: Gateway) -> None:
    if gateway.requests is None:
        _say_why_not(app)
        return
    requests = gateway.requests
    engine = requests.engine

    def shown(asked: Asked, authorization: str | None) -> dict[str, Any]:
        who = gateway.identify(authorization)
        body = {**asked.to_dict(), "may_review": engine.reviewer_role(asked.kind, who) is not None
                and asked.requester != who.user, "approvals_needed": engine.needed(asked.kind),
                "approvals": sorted({r.reviewer for r in asked.approvals()})}
        return body | ({"check": requests.release.report(asked)} if asked.kind is Kind.RELEASE else {})

    @app.get("/v1/requests", summary="Requests you made, and those you may review")
    def list_requests(authorization: Auth = None, state: str | None = None) -> list[dict[str, Any]]:
        return [r.to_dict() for r in engine.visible(gateway.identify(authorization), state)]

    @app.get("/v1/requests/{request_id}", summary="One request, with its check report")
    def show(request_id: str, authorization: Auth = None) -> dict[str, Any]:
        return shown(engine.show(request_id, gateway.identify(authorization)), authorization)

    @app.post("/v1/requests/release", summary="Start a release request (upload its files, then submit)")
    def release(body: ReleaseBody, authorization: Auth = None) -> dict[str, Any]:
        return requests.release.request(gateway.identify(authorization), body.reason).to_dict()

    @app.put("/v1/requests/{request_id}/files/{name}", summary="Upload one file (the raw body), streamed to disk")
    async def upload(request_id: str, name: str, request: Request, authorization: Auth = None,
                     content_length: Annotated[int | None, Header()] = None) -> dict[str, Any]:
        who = gateway.identify(authorization)
        receiving = await anyio.to_thread.run_sync(lambda: requests.release.receive(request_id, who, name, content_length))
        try:
            async for chunk in request.stream():
                await anyio.to_thread.run_sync(receiving.write, chunk)
        except BaseException:
            receiving.abort()
            raise
        written = await anyio.to_thread.run_sync(receiving.finish)
        return {"name": written.name, "size": written.size, "sha256": written.sha256}

    @app.post("/v1/requests/{request_id}/submit", summary="Check the files and put the request before reviewers")
    def submit(request_id: str, authorization: Auth = None) -> dict[str, Any]:
        return shown(requests.release.submit(request_id, gateway.identify(authorization)), authorization)

    @app.get("/v1/requests/{request_id}/files/{name}", summary="One file of a release request, as uploaded")
    def file(request_id: str, name: str, authorization: Auth = None) -> Response:
        path = requests.release.path(engine.show(request_id, gateway.identify(authorization)), name)
        media = IMAGES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Content-Disposition": "attachment"})

    @app.get("/v1/requests/{request_id}/files/{name}/preview", summary="A file shown for review: a table, text or notebook")
    def file_preview(request_id: str, name: str, authorization: Auth = None) -> dict[str, Any]:
        return preview(requests.release.path(engine.show(request_id, gateway.identify(authorization)), name))

    @app.post("/v1/requests/{request_id}/review", summary="Approve, reject or return, on the versions you saw")
    def review(request_id: str, body: ReviewBody, authorization: Auth = None) -> dict[str, Any]:
        asked = engine.review(request_id, gateway.identify(authorization), body.verdict, body.files, body.comment, body.comments)
        return shown(asked, authorization)

    @app.post("/v1/requests/{request_id}/deliver", summary="Write an approved release whose delivery failed, again")
    def deliver(request_id: str, authorization: Auth = None) -> dict[str, Any]:
        return shown(requests.release.deliver(request_id, gateway.identify(authorization)), authorization)

    @app.post("/v1/requests/{request_id}/withdraw", summary="Withdraw your own request")
    def withdraw(request_id: str, authorization: Auth = None) -> dict[str, Any]:
        return engine.withdraw(request_id, gateway.identify(authorization)).to_dict()

    @app.post("/v1/requests/access", summary="Ask for a role, or one column, for a while")
    def access(body: AccessBody, authorization: Auth = None) -> dict[str, Any]:
        return requests.access.request(gateway.identify(authorization), body.reason, body.duration, body.role,
                                       body.column, body.action).to_dict()

    @app.post("/v1/requests/packages", summary="Ask for a package to join the snapshot")
    def packages(body: PackageBody, authorization: Auth = None) -> dict[str, Any]:
        return requests.packages.request(gateway.identify(authorization), body.requirement, body.reason).to_dict()


def _say_why_not(app: FastAPI) -> None:
    """With a state that keeps no requests, every request route says how to turn the engine on."""

    @app.api_route("/v1/requests{rest:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    def unavailable(rest: str) -> None:
        raise UsageError("this gateway's state keeps no requests; start it with `--requests DIR` (a folder every "
                         "gateway shares) or with `--state` a folder or a postgresql:// URL")
