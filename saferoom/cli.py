"""The command line: thin verbs over the same Session a notebook uses."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import saferoom
from saferoom import settings
from saferoom.cli_requests import access_app, packages_request, release_app, requests_app
from saferoom.decision import Decision, TableInfo
from saferoom.errors import RoomError, SaferoomError, UsageError
from saferoom.policy import Policy, load_policy
from saferoom.policy.model import PolicyModel

if TYPE_CHECKING:  # pyarrow too: imported where rows are printed, not by every command (a room's start, say)
    import pyarrow as pa

    from saferoom.audit import AuditKey
    from saferoom.check import Report as CheckReport
    from saferoom.secrets import Secret
    from saferoom.split import BuildPlan
    from saferoom.split.carry import Change
    from saferoom.store import Store



class _Group(typer.core.TyperGroup):
    """typer's group, whose help shows a flag as a flag: typer 0.29 labels each one `<bool>`, as if it took a value."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_as_flags(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_as_flags(self, ctx)
        super().format_help(ctx, formatter)


def _flags_as_flags(command: Any, ctx: Any) -> None:
    """An empty label for each flag of ``command``, --help included; set once, before its help is drawn."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


app = typer.Typer(help="saferoom: ordinary SQL for data scientists; sensitive data stays put.", no_args_is_help=True, add_completion=False,
                  cls=_Group)
out = Console(soft_wrap=True)
err = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _option(name: str, help: str | None = None) -> Any:
    """The option a setting declares (saferoom/settings.py): its spellings, environment variable and help."""
    declared = settings.setting(name)
    return typer.Option(*declared.flags, envvar=declared.env, help=help or declared.help)


def _secret(name: str) -> Secret | None:
    """A secret setting, read from the environment here, at the edge."""
    return settings.secret(name, os.environ)


POLICY, STATE, FORMAT = Path(settings.default("policy")), settings.default("state") or "", Format(settings.default("format"))
PolicyOpt = Annotated[Path, _option("policy")]
UserOpt = Annotated[str, _option("user")]
RoleOpt = Annotated[str | None, _option("role")]
FormatOpt = Annotated[Format, _option("format")]
StateOpt = Annotated[str, _option("state")]
SqlArg = Annotated[str, typer.Argument(help="The SQL, or - to read it from stdin.")]


@app.command()
def query(sql: SqlArg, policy: PolicyOpt = POLICY, user: UserOpt = "", role: RoleOpt = None, format: FormatOpt = FORMAT) -> None:
    """Run a guarded query.

    Example: saferoom query "select region, sum(amount) from prod.orders group by 1" -u alice
    """
    with _connect(policy, user, role) as session:
        result = session.query(_sql(sql))
        _print_arrow(result.to_arrow(), format)
        for notice in result.notices:  # on stderr, so a piped result stays data
            err.print(f"[yellow]Note: {escape(notice)}[/]", soft_wrap=True)


@app.command()
def tables(policy: PolicyOpt = POLICY, user: UserOpt = "", role: RoleOpt = None, format: FormatOpt = FORMAT) -> None:
    """List the tables and columns you can query, with the action on each and why."""
    with _connect(policy, user, role) as session:
        catalog = session.tables()
        if format is Format.table:
            for info in catalog:
                out.print(_table_view(info))
        else:
            _print_rows([{"table": t.name, **c.__dict__} for t in catalog for c in t.columns], format)


@app.command()
def explain(sql: SqlArg, policy: PolicyOpt = POLICY, user: UserOpt = "", role: RoleOpt = None, format: FormatOpt = FORMAT) -> None:
    """Show what a query will see, column by column, and the threat behind each action."""
    with _connect(policy, user, role) as session:
        explanation = session.explain(_sql(sql))
    if format is Format.json:
        out.print_json(json.dumps(explanation.to_dict(), default=str))
    elif format is Format.csv:
        _print_rows(_explanation_rows(explanation), format, ["column", "type", "source", "action", "tag", "reason"])
    else:
        _print_explanation(explanation)
    if not explanation.allowed:
        raise typer.Exit(saferoom.QueryRejected.exit_code)


@app.command()
def lint(policy: PolicyOpt = POLICY, strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False) -> None:
    """Check a policy against the live sources: unclassified and missing columns."""
    from saferoom.lint import ERROR, lint_sources

    findings = lint_sources(load_policy(policy))
    for finding in findings:
        colour = "red" if finding.level == ERROR else "yellow"
        where = f"{policy}:{finding.line}: " if finding.line else ""
        out.print(f"{escape(where)}[{colour}]{finding.level}[/]: {escape(finding.message)}")
    failed = [f for f in findings if f.level == ERROR or strict]
    out.print(f"{len(findings)} finding(s) in {policy}" if findings else f"[green]{policy} matches its sources.[/]")
    if failed:
        raise typer.Exit(1)


@app.command("build")
def build_command(
    name: Annotated[str, typer.Argument(help="The build, as named under `builds:` in the policy.")],
    policy: PolicyOpt = POLICY,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would happen, and what would be carried over; write nothing.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Rebuild every table, even unchanged ones.")] = False,
) -> None:
    """The split: a closed analytics database, identifiers tokenized, quasi-identifiers coarsened, card data gone.

    Example: saferoom build analytics --policy saferoom.yaml
    """
    from saferoom.progress import build_progress
    from saferoom.split import build, make_plan
    from saferoom.split.carry import planned_changes

    loaded = load_policy(policy)
    if plan:
        planned = make_plan(loaded, name)
        _print_plan(planned, {c.table: c for c in planned_changes(loaded, planned, full=full)})
        return
    with build_progress(err) as progress:
        manifest = build(loaded, name, full=full, progress=progress)
    view = Table("table", "rows in", "rows out", "carried over", "k-anonymity", title=f"Built {manifest.target['path']}", title_justify="left")
    for t in manifest.tables:
        k = t.k_anonymity
        kinfo = f"smallest group {k['smallest_group'] or 'none left'}, {k['rows_suppressed']} suppressed" if k else ""
        view.add_row(t.table, str(t.rows_in), str(t.rows_out), "yes" if t.carried_over else "", kinfo)
    out.print(view)
    target = manifest.target["path"]
    out.print(f"Manifest {target}.manifest.json, fingerprints {manifest.fingerprints['file']} ({manifest.fingerprints['values']} values), "
              f"policy fragment {target}.saferoom.yaml")


def _print_plan(build_plan: BuildPlan, changes: dict[str, Change]) -> None:
    out.print(f"Build [bold]{build_plan.name}[/] as role {build_plan.role} into {build_plan.engine} {build_plan.target}")
    for table in build_plan.tables:
        view = Table("column", "type", "fate", "action", "why", "fingerprinted", title=f"{table.table} → {table.name}", title_justify="left")
        for c in table.columns:
            view.add_row(c.name, c.type, c.fate, c.action, c.reason, "yes" if c.fingerprinted else "")
        out.print(view)
        change = changes[table.table]
        out.print(f"  {'carried over' if change.carried else 'built'}: {change.reason}")
        if table.row_filter:
            out.print(f"  rows kept: {table.row_filter}")
        if table.row_filter_left:
            out.print(f"  [yellow]needs a user, left to the analytics policy:[/] {table.row_filter_left}")
        if table.removed:
            fingerprinted = [c for c in table.removed if c in table.fingerprinted]
            out.print(f"  removed: {', '.join(table.removed)}" + (f" (values fingerprinted: {', '.join(fingerprinted)})" if fingerprinted else ""))
        if table.k_columns and build_plan.k_anonymity:
            k = build_plan.k_anonymity
            out.print(f"  k-anonymity: k={k.k} over {', '.join(table.k_columns)} ({k.on_violation})")


AuditKeyOpt = Annotated[str | None, typer.Option(
    help="The audit key that seals the log and signs its checkpoints: env:NAME or file:PATH, kept outside --state.")]
token_app = typer.Typer(help="Personal API tokens for the gateway.", no_args_is_help=True, cls=_Group)
audit_app = typer.Typer(help="The gateway's tamper-evident audit log.", no_args_is_help=True, cls=_Group)
packages_app = typer.Typer(help="Curated, pinned, audited Python packages for rooms without internet.", no_args_is_help=True, cls=_Group)
app.add_typer(packages_app, name="packages")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
state_app = typer.Typer(help="The gateway's state: a folder, or PostgreSQL shared by several gateways.", no_args_is_help=True, cls=_Group)
app.add_typer(state_app, name="state")
app.add_typer(release_app, name="release", cls=_Group)
app.add_typer(access_app, name="access", cls=_Group)
app.add_typer(requests_app, name="requests", cls=_Group)
packages_app.command("request")(packages_request)


@app.command()
def serve(
    policy: PolicyOpt = POLICY,
    state: StateOpt = STATE,
    host: Annotated[str, typer.Option(help="Address to listen on; beyond loopback, use TLS.")] = "127.0.0.1",
    port: int = 8470,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    jwks: Annotated[str | None, typer.Option(help="Accept OIDC bearer JWTs verified against this JWKS (file or URL).")] = None,
    jwt_audience: str | None = None,
    jwt_issuer: str | None = None,
    jwt_claim: Annotated[str, typer.Option(help="The JWT claim that names the user.")] = "sub",
    packages: Annotated[Path | None, typer.Option(help="Serve this package snapshot folder at /simple/ (its `latest`).")] = None,
    audit_key: AuditKeyOpt = None,
    audit_forward: Annotated[list[str] | None, typer.Option(
        help="Also send every audit record and checkpoint to syslog+tcp://HOST:PORT or file:PATH (repeatable); "
             "a query whose record cannot be sent does not run.")] = None,
    max_sql_bytes: Annotated[int, typer.Option(min=1024, help="The longest query text accepted, in bytes.")] = 256 * 1024,
    socket: Annotated[Path | None, typer.Option(help="Listen on this Unix socket instead of --host/--port (rooms reach the gateway so).")] = None,
    outbox: Annotated[Path | None, typer.Option(help="Where approved releases are written (default: STATE/outbox; with PostgreSQL state, required for releases: one folder every gateway shares); outside every room.")] = None,
    webhook: Annotated[list[str] | None, typer.Option(help="POST a JSON notice of each request's state change here (repeatable).")] = None,
    requests: Annotated[Path | None, typer.Option(help="Keep release, access and package requests in this folder (default: in the state: STATE/requests, or PostgreSQL); with PostgreSQL state, a folder every gateway shares.")] = None,
    max_upload_bytes: Annotated[int, typer.Option(min=1, help="The largest file a release request may hold.")] = 256 << 20,
    max_request_bytes: Annotated[int, typer.Option(min=1, help="The most a release request may hold in all.")] = 1 << 30,
    flight_sql: Annotated[int | None, typer.Option(
        "--flight-sql", min=0, max=65535, metavar="PORT",
        help="Also serve Arrow Flight SQL on --host at this port (ADBC: pandas.read_sql at Arrow speed); TLS as the HTTP server. Needs saferoom[adbc].")] = None,
) -> None:
    """Run the gateway: it holds the credentials and the policy; people hold personal tokens.

    Example: saferoom serve --policy saferoom.yaml --state /var/lib/saferoom --audit-key env:SAFEROOM_AUDIT_KEY
    """
    from saferoom.identity import JWTSettings
    from saferoom.requests import Limits
    from saferoom.server.run import serve as run_server

    jwt = JWTSettings(jwks, jwt_audience, jwt_issuer, jwt_claim) if jwks else None
    run_server(policy, state, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, jwt=jwt, packages=packages,
               audit_key=_audit_key(audit_key), audit_forward=audit_forward or (), max_sql_bytes=max_sql_bytes, socket_path=socket,
               outbox=outbox, webhooks=webhook or (), request_limits=Limits(max_upload_bytes, max_request_bytes),
               requests_folder=requests, flight_sql_port=flight_sql)


@token_app.command("create")
def token_create(
    # not SAFEROOM_USER: that names who is asking, and a token made for them by mistake would be a credential
    user: Annotated[str, typer.Option("--user", "-u", help="Whose token it is.")],
    state: StateOpt = STATE,
    role: Annotated[str | None, _option("role", "Bind the token to one role.")] = None,
    ttl: Annotated[str | None, typer.Option(help="Lifetime, like 30d, 12h or 90m.")] = None,
    policy: Annotated[Path | None, _option("policy", "The gateway's policy: the user and role are checked against it.")] = None,
) -> None:
    """Create a token and print it once; only its hash is kept.

    Example: saferoom token create --policy saferoom.yaml --state state --user alice
    """
    from saferoom.identity import parse_ttl

    _policy_for_token(policy).role_for(user, role)  # fail closed: no token for a user or role the policy lacks
    token, record = _store(state).tokens.create(user, role, parse_ttl(ttl))
    sys.stdout.write(token + "\n")
    err.print(f"Token {record.id} for {user}" + (f" as {role}" if role else "") + (f", expires {record.expires}" if record.expires else "") + ". It is shown only now.")


def _policy_for_token(policy: Path | None) -> Policy:
    """The policy a token is checked against; never guessed, since a token for a user it lacks would be unusable or wrong."""
    if policy is None:
        raise UsageError("give the gateway's policy with --policy PATH (or SAFEROOM_POLICY), so the user and role "
                         "can be checked before a token is made")
    return load_policy(policy)


@token_app.command("list")
def token_list(state: StateOpt = STATE, format: FormatOpt = FORMAT) -> None:
    """List tokens (never their secrets)."""
    _print_rows([r.public() for r in _store(state).tokens.list()], format, ["id", "user", "role", "created", "expires", "revoked"])


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (from `token list`).")], state: StateOpt = STATE) -> None:
    """Revoke a token; it is refused from the next request on."""
    record = _store(state).tokens.revoke(token_id)
    out.print(f"Revoked token {record.id} of {record.user}.")


def _store(state: str, existing: bool = False) -> Store:
    """The store ``--state`` names; ``existing``: a folder must be there already (reading never makes one)."""
    from saferoom.store import is_url, open_store

    if existing and not is_url(state) and not Path(state).is_dir():
        raise UsageError(f"no gateway state folder at {state}; give the folder (or the postgresql:// URL) "
                         "`saferoom serve --state` wrote to")
    return open_store(state)


@app.command()
def login(url: Annotated[str, _option("url", "The gateway, e.g. https://saferoom.internal:8470")],
          token_file: Annotated[Path | None, typer.Option(help="Read the token from this file instead of stdin.")] = None) -> None:
    """Save a gateway URL and your token (mode 0600) so notebooks need no secrets."""
    from saferoom.client import RemoteSession, save_credentials

    token = (token_file.read_text() if token_file else sys.stdin.readline()).strip()
    with RemoteSession(url, token) as session:
        path = save_credentials(url, token)
        out.print(f"Signed in to {url} as {session.user} (role {session.role}); saved to {path}.")


@audit_app.command("verify")
def audit_verify(
    state: StateOpt = STATE,
    key: Annotated[str | None, typer.Option("--key", help="The audit key (env:NAME or file:PATH): checks every record's seal and the head's.")] = None,
    public_key: Annotated[str | None, typer.Option(help="The audit public key (ed25519:…) or a file holding it: checks signed checkpoints.")] = None,
    checkpoints: Annotated[Path | None, typer.Option(help="The forwarded copy (the file destination, or lines extracted from syslog).")] = None,
) -> None:
    """Check the hash chain, its seals and, against a forwarded copy, that nothing is missing; exits 1 on any break.

    Example: saferoom audit verify --state /var/lib/saferoom --public-key audit.pub --checkpoints /mnt/copy/audit.log
    """
    from saferoom.audit import PublicKey

    public = PublicKey.load(public_key) if public_key else None
    result = _store(state, existing=True).verify_audit(_audit_key(key), public, checkpoints)
    for note in result.notes:
        err.print(f"[dim]{escape(note)}[/]", highlight=False)
    if result.ok:
        sealed = f", {result.sealed} sealed" if result.sealed else ""
        signed = f", {result.checkpoints} signed checkpoints matched" if result.checkpoints else ""
        out.print(f"[green]The audit log verifies:[/] {result.records} records{sealed}{signed}, chain and head intact.")
        return
    where = f" at line {result.line}" if result.line else ""
    out.print(f"[red]The audit log does not verify{where}:[/] {escape(result.problem or '')} ({result.records} good records before it)")
    raise typer.Exit(1)


@state_app.command("migrate")
def state_migrate(
    source: Annotated[Path, typer.Option("--from", help="The state folder `saferoom serve --state` wrote to.")],
    target: Annotated[str, typer.Option("--to", help="The PostgreSQL database: postgresql://USER@HOST/DB (password "
                                        "from PGPASSWORD or ~/.pgpass).")],
    key: Annotated[str | None, typer.Option("--key", help="The audit key, when the log is sealed: env:NAME or file:PATH.")] = None,
) -> None:
    """Move a state folder into PostgreSQL in one transaction; the chain is verified before and on arrival.

    Stop the gateway first. Example: saferoom state migrate --from /var/lib/saferoom --to postgresql://saferoom@db/saferoom
    """
    from saferoom.requests.pgstore import copier
    from saferoom.store import is_url
    from saferoom.store.migrate import migrate
    from saferoom.store.postgres import redacted

    if not is_url(target):
        raise UsageError(f"--to {target!r}: give a postgresql:// URL")
    done = migrate(source, target, _audit_key(key), also=[copier(source / "requests")])
    kept = f" ({done.kept} were there already: the same chain)" if done.kept else ""
    out.print(f"Moved {done.records} audit records{kept}, {done.tokens} tokens, {done.namespaces} record namespaces "
              f"and {done.also[0]} requests with their files into PostgreSQL; the chain verifies there. Start the "
              f"gateways with --state {redacted(target)!r} (and --outbox DIR for releases).")


@audit_app.command("public-key")
def audit_public_key(key: Annotated[str, typer.Option("--key", help="The audit key: env:NAME or file:PATH.")]) -> None:
    """Print the public key that verifies the log's signed checkpoints; it can be published.

    Example: saferoom audit public-key --key env:SAFEROOM_AUDIT_KEY > audit.pub
    """
    from saferoom.audit import AuditKey

    sys.stdout.write(f"{AuditKey.resolve(key).public}\n")


@audit_app.command("report")
def audit_report(state: StateOpt = STATE, format: FormatOpt = FORMAT) -> None:
    """Per user and per tag: queries, refusals, rows and bytes; flags sudden jumps in volume."""
    from saferoom.audit import report

    summary = report(_store(state, existing=True).read_audit())
    if format is Format.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        return
    if format is Format.csv:  # one table: a row per user, then a row per tag
        counts = ("queries", "refused", "rows", "bytes")
        rows = [{"kind": "user", "name": u, **{k: c.get(k, 0) for k in counts}} for u, c in summary["users"].items()]
        rows += [{"kind": "tag", "name": t, "queries": n, "refused": None, "rows": None, "bytes": None} for t, n in summary["tags"].items()]
        _print_rows(rows, format, ["kind", "name", *counts])
        return
    rows = [{"user": u, **{k: c.get(k, 0) for k in ("queries", "refused", "rows", "bytes")}} for u, c in summary["users"].items()]
    _print_rows(rows, format, ["user", "queries", "refused", "rows", "bytes"])
    _print_rows([{"tag": t, "queries": n} for t, n in summary["tags"].items()], format, ["tag", "queries"])
    for flag in summary["flags"]:
        out.print(f"[yellow]flag:[/] {flag}")


@packages_app.command("sync")
def packages_sync(
    dest: Annotated[Path, typer.Option("--dest", help="Where snapshots go: DEST/<date>/ and DEST/latest.")],
    policy: PolicyOpt = POLICY,
    index_url: Annotated[str | None, typer.Option(help="Upstream PEP 503 index (default: the public one pip uses).")] = None,
    requested: Annotated[str | None, typer.Option(help="Approved package requests: a file, one a line (the gateway keeps "
                                                       "it in STATE/requests/approved-packages.txt), or the gateways' "
                                                       "postgresql:// state, read directly.")] = None,
) -> None:
    """Resolve, download, audit and publish a dated snapshot of the approved packages.

    Exits 0 when every requirement was admitted, 12 when the snapshot was published without a refused
    requirement, 10 when nothing was published (the report of what was decided is kept in DEST/failed/).

    Example: saferoom packages sync --policy saferoom.yaml --dest /srv/packages
    """
    from saferoom.errors import PackagesRefused
    from saferoom.packages import sync

    with err.status("Resolving and auditing packages...") as status:
        report = sync(load_policy(policy), dest, index_url, progress=lambda message: status.update(escape(message)),
                      requested=_requested(requested))
    _print_snapshot(report)
    out.print(f"report: {dest / str(report.snapshot) / 'report.json'}")
    out.print(f"pip install --isolated --index-url file://{dest.absolute() / 'latest' / 'simple'} <package>")
    if report.refused_requirements:
        names = ", ".join(r["requirement"] for r in report.refused_requirements)
        raise PackagesRefused(f"published without {names}: refused (reasons above and in report.json)")


def _requested(source: str | None) -> list[str]:
    """Approved package requests, from a file or from the gateways' PostgreSQL state."""
    from saferoom.store import is_url

    if source is not None and is_url(source):
        from saferoom.requests.pgstore import approved_packages

        return approved_packages(source)
    return _lines(Path(source) if source is not None else None)


def _lines(path: Path | None) -> list[str]:
    """The non-empty lines of ``path`` (none without one); a file named but missing is an error, not nothing."""
    if path is None:
        return []
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _print_snapshot(report: Any) -> None:
    view = Table("package", "version", "license", "read from", title=f"Snapshot {report.snapshot}: admitted", title_justify="left")
    for entry in report.admitted:
        decision = entry["license"]
        sources = ", ".join(dict.fromkeys(e["source"] for e in decision["evidence"]))
        view.add_row(str(entry["project"]), str(entry["version"]), str(decision["expression"]), sources)
    out.print(view)
    for entry in report.admitted:
        bundled = sorted({b["license"] for b in entry["license"]["bundled"]})
        if bundled:
            out.print(f"[cyan]review[/] {entry['project']} {entry['version']} bundles {', '.join(bundled)}")
    for fallback in report.fallbacks:
        out.print(f"[yellow]instead[/] {fallback['project']} {fallback['chosen']} was chosen instead of "
                  f"{fallback['refused']}: {escape(fallback['reason'])}")
    for refused in report.refused_versions:
        out.print(f"[yellow]refused[/] {refused['project']} {refused['version']}: {escape(str(refused['reason']))}")
    for refused in report.refused_requirements:
        out.print(f"[red]requirement refused[/] {refused['requirement']}: {escape(refused['reason'])}")


@packages_app.command("check")
def packages_check(
    snapshot: Annotated[Path, typer.Argument(help="A snapshot folder, or the folder holding `latest`.")],
    vulnerabilities: Annotated[Path | None, typer.Option(
        help="An OSV export (folder of JSON files, or its zip); default: the policy's `vulnerabilities`.")] = None,
    policy: PolicyOpt = POLICY,
) -> None:
    """Audit a snapshot again against a vulnerability export; exits 1 on findings. Downloads nothing.

    Example: saferoom packages check /srv/packages --vulnerabilities osv-2026-12.zip
    """
    from saferoom.packages import check, vulnerability_export

    export, allow_empty = vulnerability_export(vulnerabilities, policy)
    findings, vulns = check(snapshot, export, allow_empty=allow_empty)
    for finding in findings:
        out.print(f"[red]vulnerable[/] {finding.project} {finding.version} ({finding.file}): {', '.join(finding.advisories)}")
    feed = vulns.provenance
    out.print(f"checked against {feed.advisories} PyPI advisories from {feed.source} (newest {feed.newest_modified})"
              if feed else "checked against no vulnerability feed (allow_empty_vulnerabilities)")
    if findings:
        raise typer.Exit(1)
    out.print("[green]No admitted package has a known vulnerability in this export.[/]")


@app.command("compile")
def compile_command(
    policy: PolicyOpt = POLICY,
    engine: Annotated[str, typer.Option(help="The database to compile for.")] = "postgres",
    schema: Annotated[str, typer.Option(help="Prefix of the schemas and roles it makes.")] = "saferoom",
    apply: Annotated[bool, typer.Option("--apply", help="Run it (needs a role that may create roles and schemas).")] = False,
    drop: Annotated[bool, typer.Option("--drop", help="Remove everything it made.")] = False,
    admin_url: Annotated[str | None, typer.Option(help="Connect as this user to apply (default: the source's url).")] = None,
) -> None:
    """Compile the policy into per-role views and roles inside PostgreSQL, for tools that connect directly.

    Example: saferoom compile --policy saferoom.yaml --apply --admin-url postgresql://admin@db/prod
    The admin password comes from SAFEROOM_ADMIN_PASSWORD; the token key is never printed.
    """
    from saferoom import compile as compiler

    loaded = load_policy(policy)
    if not (apply or drop):
        sys.stdout.write(compiler.script(loaded, engine, schema))
        return
    url, password = compiler.admin_target(loaded, admin_url, _secret("admin_password"), engine)
    count = compiler.apply(loaded, url, password, schema, drop=drop)
    out.print(f"{'Dropped' if drop else 'Applied'}: {count} statements.")


class CheckFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


@app.command("check")
def check_command(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to check (folders recursively, honouring .gitignore).")],
    fingerprints: Annotated[Path | None, typer.Option(help="A fingerprint index from `saferoom build`.")] = None,
    policy: Annotated[Path | None, _option("policy", "Derive the fingerprint key from this policy's token key.")] = None,
    format: Annotated[CheckFormat, _option("format")] = CheckFormat.text,
    min_cell: Annotated[int, typer.Option(help="Counts below this are small cells.")] = 10,
    details: Annotated[bool, typer.Option("--details", help="List every finding with its sha256, not a summary per file and column.")] = False,
) -> None:
    """The airlock: find PII, secrets, real customer values and small cells before anything leaves.

    Exit 0 when clean, 1 with findings, 2 on a usage or read error.
    Example: saferoom check report.csv notebooks/ --fingerprints analytics.duckdb.fingerprints -p saferoom.yaml
    """
    from rich.progress import Progress

    from saferoom.check import check, files

    with Progress(console=err, transient=True) as bar:
        targets = files(paths)  # walked once: the bar's total and the files to check
        task = bar.add_task("Checking", total=len(targets) or None)
        report = check([str(p) for p in targets], fingerprints=fingerprints, key=_secret("fingerprint_key"), policy=policy,
                       min_cell=min_cell, progress=lambda f: bar.update(task, advance=1, description=escape(Path(f).name)[:40]))
    _print_check(report, format, details)
    raise typer.Exit(report.exit_code)


def _print_check(report: CheckReport, format: CheckFormat, details: bool) -> None:
    from saferoom.check import EXAMPLES
    from saferoom.check.sarif import sarif

    if format is CheckFormat.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    elif format is CheckFormat.sarif:
        sys.stdout.write(json.dumps(sarif(report, saferoom.__version__), indent=1) + "\n")
    else:
        if details:
            _print_findings(report)
        else:
            _print_summary(report)
        for file, problem in report.errors:
            out.print(f"[yellow]unreadable[/] {escape(file)}: {escape(problem)}")
        kept = f" ({report.omitted} past the first {EXAMPLES} of a file, place and kind not listed)" if report.omitted else ""
        out.print(f"{report.files} file(s), {sum(report.counts.values())} finding(s){kept}, {len(report.errors)} unreadable.")


def _print_findings(report: CheckReport) -> None:
    for f in report.findings:
        out.print(f"[red]{f.kind}[/] {escape(f.file)} {escape(f.location)}: {escape(f.preview)} ({escape(f.rule)}) "
                  f"[dim]sha256:{f.sha256}[/]")


def _print_summary(report: CheckReport) -> None:
    """One line per file, column (or a text's lines) and kind; the hashes, for .saferoom-allow, are in --details."""
    for g in report.summary():
        e = g.example
        count = f"{g.count} findings, e.g. {escape(e.location)}: " if g.count > 1 else ""
        out.print(f"[red]{g.kind}[/] {escape(g.file)} {escape(g.where())}: {count}{escape(e.preview)} ({escape(e.rule)})",
                  soft_wrap=True)
    if report.findings:
        out.print("[dim]--details lists every finding with the sha256 that .saferoom-allow accepts.[/]")


@app.command(context_settings={"allow_interspersed_args": False})
def room(
    command: Annotated[list[str], typer.Argument(help="What to run inside, after --: python, bash, a script.")],
    socket: Annotated[Path | None, _option("socket", "The gateway's Unix socket (`serve --socket`): the room's only way out.")] = None,
    gateway: Annotated[str | None, typer.Option(help="A gateway's URL instead: a relay on a socket carries the room's requests there.")] = None,
    workspace: Annotated[Path, typer.Option(help="The one folder the room may write (default: this one).")] = Path("."),
    packages: Annotated[Path | None, typer.Option(help="A package snapshot, read-only inside; pip installs from it only.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Whose room: mint a token for them in --state.")] = None,
    role: Annotated[str | None, _option("role", "Bind the minted token to this role.")] = None,
    state: Annotated[Path | None, _option("state", "The gateway's state folder, to mint the room's token in.")] = None,
    policy: Annotated[Path | None, _option("policy", "Take the room's limits from this policy's `rooms:`.")] = None,
    account: Annotated[str | None, typer.Option(help="Started as root: the account the room runs as (default: the user's name).")] = None,
    ttl: Annotated[str, typer.Option(help="The longest the minted token lives, however long the room runs (30d, 12h, 90m).")] = "12h",
    lease: Annotated[str, typer.Option(help="How soon the minted token dies if this process is killed (it renews it while it runs).")] = "60s",
    env: Annotated[list[str] | None, typer.Option("--env", help="Give the command this variable of this environment (repeat).")] = None,
    hub: Annotated[str | None, typer.Option(help="A JupyterHub's API URL: a relay at /run/saferoom/hub.sock reaches it.")] = None,
    publish: Annotated[int | None, typer.Option(help="Connections to 127.0.0.1:PORT reach the socket /run/saferoom/published/server.sock.")] = None,
) -> None:
    """Run a command in a sandbox whose only way to data is the gateway; its exit status is the command's.

    With --state and --user, a token is minted for the room and revoked when it ends; otherwise the
    room uses SAFEROOM_TOKEN. Example: saferoom room --socket /run/saferoom.sock --state /var/lib/saferoom -u alice -- python job.py
    """
    from saferoom import room as rooms
    from saferoom.relay import Opening, Relay

    if (socket is None) == (gateway is None):
        raise UsageError("give the gateway's socket, --socket PATH (what `saferoom serve --socket` listens on; or set "
                         "SAFEROOM_SOCKET), or its URL, --gateway URL; one of them")
    loaded = load_policy(policy) if policy else None
    rooms.possible()  # before a token exists for a room that cannot be
    with contextlib.ExitStack() as stack:  # on the way out: the token revoked, the relay closed
        token = _room_token(stack, state, user, role, (ttl, lease), policy)
        door = socket or stack.enter_context(Relay(str(gateway)))
        status = rooms.start(command, door, workspace, token, policy=loaded, packages=packages,
                             account_name=account, private=[state] if state else [],
                             hub=stack.enter_context(Relay(hub, "--hub")) if hub else None,
                             published=stack.enter_context(Opening(publish)) if publish else None, passed=_passed(env or []))
    _leave(status)


def _leave(status: int) -> NoReturn:
    """Exit with the room's status once it has ended (its token revoked, its doors closed): nothing is left to do
    but flush the output. Tearing the interpreter down module by module would add a tenth of a second of processor
    time to every room (measured by bench/room.py), and the room's starter holds nothing that needs it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _passed(names: list[str]) -> dict[str, str]:
    """The named variables of this environment, for the room's command: values never on a command line."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise UsageError(f"--env names variables this environment lacks: {', '.join(missing)}")
    return {name: os.environ[name] for name in names}


def _room_token(stack: contextlib.ExitStack, state: Path | None, user: str | None, role: str | None,
                lifetimes: tuple[str, str], policy: Path | None) -> Secret:
    """A token minted for the room in the state folder, revoked when ``stack`` closes; or SAFEROOM_TOKEN as it is."""
    from saferoom.identity import parse_ttl
    from saferoom.room import LEASE, TOKEN_TTL, minted

    if state is not None:
        if not user:
            raise UsageError("--state mints a token for the room's user: give --user")
        _policy_for_token(policy).role_for(user, role)  # as `token create`: no token for a user or role the policy lacks
        ttl, lease = (parse_ttl(text) for text in lifetimes)
        return stack.enter_context(minted(state, user, role, ttl or TOKEN_TTL, lease or LEASE))
    given = _secret("token")
    if given is None or role or user:
        raise UsageError("without --state, the room uses SAFEROOM_TOKEN as it is: set it, and leave out --user and --role")
    return given


@app.command()
def doctor() -> None:
    """Check that this host can make rooms, and say what it lacks and how to fix it."""
    from saferoom import cgroup
    from saferoom import room as rooms

    found = rooms.problems()
    for problem in found:
        err.print(f"[red]missing:[/] {escape(problem)}", highlight=False)
    if found:
        raise typer.Exit(RoomError.exit_code)
    out.print("This host can make rooms: bubblewrap makes a sandbox here, with a system-call filter (libseccomp).")
    out.print(escape(cgroup.status()), highlight=False)


@app.command()
def schema() -> None:
    """Print the policy file's JSON Schema, for editor completion."""
    out.print_json(json.dumps(PolicyModel.model_json_schema()))


@app.command()
def demo(dir: Annotated[Path, typer.Option("--dir", help="Folder for the demo database and policy.")] = Path("demo"), customers: int = 20_000) -> None:
    """Build a synthetic fintech database and walk through what each role sees."""
    from saferoom.walkthrough import run

    run(dir, customers, out)


def _audit_key(reference: str | None) -> AuditKey | None:
    """The audit key a reference points at; a clear error (exit 2) before anything starts when it cannot be read."""
    from saferoom.audit import AuditKey

    return AuditKey.resolve(reference) if reference else None


def _connect(policy: Path, user: str, role: str | None) -> saferoom.SessionProtocol:
    """Embedded with --policy/--user; through the gateway when SAFEROOM_URL or `saferoom login` says so."""
    if not user and not policy.exists():
        return saferoom.connect(role=role)
    if not user:
        raise UsageError("say who is asking: -u alice (or set SAFEROOM_USER)")
    return saferoom.connect(policy, user=user, role=role)


def _sql(sql: str) -> str:
    return sys.stdin.read() if sql == "-" else sql


def _print_arrow(table: pa.Table, format: Format) -> None:
    import pyarrow.csv

    if format is Format.csv:
        buffer = io.BytesIO()
        pyarrow.csv.write_csv(_flat(table), buffer)
        sys.stdout.write(buffer.getvalue().decode())
    else:
        _print_rows(table.to_pylist(), format, table.column_names)


def _flat(table: pa.Table) -> pa.Table:
    """CSV has no lists or structs: such a column is written as JSON text, one value per cell."""
    import pyarrow as pa

    for index, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = pa.array([None if v is None else json.dumps(v, default=str) for v in table.column(index).to_pylist()], pa.string())
            table = table.set_column(index, field.name, text)
    return table


def _print_rows(rows: list[dict[str, Any]], format: Format, columns: list[str] | None = None) -> None:
    if format is Format.json:
        sys.stdout.write(json.dumps(rows, default=str, indent=1) + "\n")
        return
    columns = columns or (list(rows[0]) if rows else [])
    if format is Format.csv:  # with no rows, the header still says what the columns are
        import pyarrow as pa

        _print_arrow(pa.Table.from_pylist(rows).select(columns) if rows else pa.table({c: pa.array([], pa.string()) for c in columns}), format)
        return
    view = Table(*columns)
    for row in rows:
        view.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    out.print(view)


def _table_view(info: TableInfo) -> Table:
    title = info.name + (f"  [dim](rows filtered: {info.row_filter})[/]" if info.row_filter else "")
    view = Table("column", "type", "you get", "why", title=title, title_justify="left")
    for c in info.columns:
        shown = "[red]deny (not queryable)[/]" if c.action == "deny" else c.action
        view.add_row(c.name, c.type, shown, c.reason)
    return view


def _explanation_rows(decision: Decision) -> list[dict[str, Any]]:
    """One row per output column and source column it comes from (a computed column has none); a refusal is one row."""
    if decision.refusal:
        return [{"column": None, "type": None, "source": None, "action": "refused", "tag": None, "reason": decision.refusal.message}]
    return [{"column": c.name, "type": c.type, "source": s.name if s else None, "action": s.action if s else "computed",
             "tag": s.tag if s else None, "reason": s.reason if s else None}
            for c in decision.columns for s in (c.sources or (None,))]


def _print_explanation(decision: Decision) -> None:
    if decision.refusal:
        out.print(f"[red]Refused[/] for role {decision.role}: {escape(decision.refusal.message)}")
        for note in decision.notes:
            out.print(escape(note))
        return
    view = Table("output column", "type", "comes from", title=f"As role {decision.role}", title_justify="left")
    for column in decision.columns:
        sources = "; ".join(f"{s.name}: {s.action} ({s.reason})" for s in column.sources) or "computed"
        view.add_row(column.name, column.type, sources)
    out.print(view)
    for info in decision.tables:
        if info.row_filter:
            out.print(f"Rows of {info.name} are filtered: {info.row_filter}")
    for note in decision.notes:
        out.print(note)


def main() -> NoReturn:
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its parse fallbacks are ours to report
    try:
        app()  # standalone: usage errors exit 2, typer.Exit carries its code
    except SaferoomError as exc:
        err.print(f"[red]Error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    sys.exit(0)
