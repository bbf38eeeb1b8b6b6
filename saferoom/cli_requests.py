"""The request commands: `saferoom release|access|packages request` and `saferoom requests ...`, thin over the gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from saferoom.errors import UsageError

out = Console(soft_wrap=True)
Reason = Annotated[str, typer.Option("--reason", help="Why: reviewers decide on it.")]
RequestId = Annotated[str, typer.Argument(help="The request's id (from `saferoom requests list`).")]
Json = Annotated[bool, typer.Option("--json", help="Print the request as JSON.")]


def _client() -> Any:
    from saferoom.requests.client import RequestsClient, gateway

    return RequestsClient(gateway())


def _said(request: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(request))
        return
    out.print(f"{request['id']}  {request['kind']}  {request['state']}  by {request['requester']}: {escape(request['reason'])}",
              highlight=False)
    for file in request.get("files", []):
        out.print(f"  {escape(file['name'])}  {file['size']:,} bytes  sha256 {file['sha256']}", highlight=False)
    for finding in request.get("check", {}).get("findings", []):
        out.print(f"  [yellow]finding[/] {escape(finding['file'])} {escape(finding['location'])}: {escape(finding['rule'])}",
                  highlight=False)
    for review in request.get("reviews", []):
        out.print(f"  {review['verdict']} by {review['reviewer']} at {review['time']}: {escape(review['comment'])}", highlight=False)
    if request.get("expires"):
        out.print(f"  in force until {request['expires']}")


release_app = typer.Typer(help="Take results out of the room: files reviewed before they leave.", no_args_is_help=True)
access_app = typer.Typer(help="Ask for a role, or one column, for a while.", no_args_is_help=True)
requests_app = typer.Typer(help="Release, access and package requests: yours, and those you review.", no_args_is_help=True)


@release_app.command("request")
def release_request(files: Annotated[list[Path], typer.Argument(help="The files to take out.")], reason: Reason,
                    as_json: Json = False) -> None:
    """Upload files for release, check them (`saferoom check`), and put them before reviewers.

    Example: saferoom release request results/summary.csv chart.png --reason "quarterly report"
    """
    _said(_client().release(files, reason), as_json)


@access_app.command("request")
def access_request(
    reason: Reason,
    duration: Annotated[str, typer.Option("--for", help="How long, like 4h or 90m.")] = "4h",
    role: Annotated[str | None, typer.Option("--role", help="A role to hold for a while.")] = None,
    column: Annotated[str | None, typer.Option("--column", help="One column, source.table.column.")] = None,
    action: Annotated[str, typer.Option("--action", help="What the column shows (with --column).")] = "allow",
    as_json: Json = False,
) -> None:
    """Ask an approver for a role, or one column, until the time runs out.

    Example: saferoom access request --column prod.customers.email --for 4h --reason "fraud case 1142"
    """
    _said(_client().access(reason, duration, role, column, action), as_json)


def packages_request(requirement: Annotated[str, typer.Argument(help="NAME or NAME==VERSION.")], reason: Reason,
                     as_json: Json = False) -> None:
    """Ask for a package to join the snapshot; once approved, the next `packages sync` resolves it.

    Example: saferoom packages request polars==1.12.0 --reason "faster joins"
    """
    _said(_client().package(requirement, reason), as_json)


@requests_app.command("list")
def requests_list(state: Annotated[str | None, typer.Option(help="Only requests in this state, e.g. submitted.")] = None,
                  as_json: Json = False) -> None:
    """Your requests, and those you may review."""
    found = _client().list(state)
    if as_json:
        out.print_json(json.dumps(found))
    for request in [] if as_json else found:
        out.print(f"{request['id']}  {request['kind']:8}  {request['state']:9}  {request['requester']}  "
                  f"{escape(request['reason'][:60])}", highlight=False)


@requests_app.command("show")
def requests_show(request_id: RequestId, as_json: Json = False) -> None:
    """One request: its files and their hashes, the check's findings, the reviews so far."""
    _said(_client().show(request_id), as_json)


def _review(request_id: str, verdict: str, comment: str, file_comment: list[str] | None, as_json: bool) -> None:
    client = _client()
    shown = client.show(request_id)
    seen = {f["name"]: f["sha256"] for f in shown["files"]}  # the versions shown here are the versions reviewed
    notes = dict(_pair(item) for item in file_comment or [])
    _said(client.review(request_id, verdict, seen, comment, notes), as_json)


def _pair(item: str) -> tuple[str, str]:
    name, sep, text = item.partition("=")
    if not sep:
        raise UsageError(f"--file-comment {item[:40]!r}: write NAME=TEXT")
    return name, text


Comment = Annotated[str, typer.Option("--comment", help="A comment on the whole request.")]
FileComment = Annotated[list[str] | None, typer.Option("--file-comment", help="NAME=TEXT, a comment on one file (repeat).")]


@requests_app.command("approve")
def requests_approve(request_id: RequestId, comment: Comment = "", file_comment: FileComment = None, as_json: Json = False) -> None:
    """Approve the request as its files are now (their hashes are sent: a file changed since is refused)."""
    _review(request_id, "approve", comment, file_comment, as_json)


@requests_app.command("reject")
def requests_reject(request_id: RequestId, comment: Comment = "", file_comment: FileComment = None, as_json: Json = False) -> None:
    """Reject the request: nothing of it is released or granted."""
    _review(request_id, "reject", comment, file_comment, as_json)


@requests_app.command("return")
def requests_return(request_id: RequestId, comment: Comment = "", file_comment: FileComment = None, as_json: Json = False) -> None:
    """Return the request to its requester for changes, with comments per file."""
    _review(request_id, "return", comment, file_comment, as_json)


@requests_app.command("deliver")
def requests_deliver(request_id: RequestId, as_json: Json = False) -> None:
    """Write an approved release to the outbox again, after its delivery failed (a full disk, say); a reviewer
    of releases runs it. Safe to repeat: a release the outbox holds already is only recorded as released."""
    _said(_client().deliver(request_id), as_json)


@requests_app.command("withdraw")
def requests_withdraw(request_id: RequestId, as_json: Json = False) -> None:
    """Withdraw a request of your own."""
    _said(_client().withdraw(request_id), as_json)
