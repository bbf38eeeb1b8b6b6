"""Sessions: the one object a notebook, the command line and the server all use."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import pyarrow as pa

from saferoom.client import RemoteSession, load_credentials
from saferoom.decision import MAX_SQL_BYTES, Decision, TableInfo, refused
from saferoom.disclosure import quasi_columns, unique_note, unique_rows_sql
from saferoom.engines import registry
from saferoom.engines.base import Cancel, Engine
from saferoom.errors import QueryRejected, UsageError
from saferoom.explain import catalog, decide
from saferoom.guard import Guard, GuardedQuery
from saferoom.guard.aggregate_dp import NoisePlan
from saferoom.guard.check_nodes import check_filters
from saferoom.notices import aggregate_notes, aggregate_rules, row_filter_notice
from saferoom.policy import Policy, load_policy
from saferoom.policy.limits import Limits, role_limits
from saferoom.privacy import Ledger, MemoryLedger, add_noise, require_opendp
from saferoom.result import Result
from saferoom.settings import default

DEFAULT_POLICY = default("policy")


class SessionProtocol(Protocol):
    """What embedded and gateway sessions share: what :func:`connect` returns."""

    @property
    def user(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def dialect(self) -> str: ...

    def query(self, sql: str) -> Result: ...

    def tables(self) -> list[TableInfo]: ...

    def explain(self, sql: str) -> Decision: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Session:
    """A user acting as exactly one role against the policy's sources."""

    def __init__(self, policy: Policy, user: str, role: str | None = None, *, engine: Engine | None = None,
                 backend: str | None = None, limits: Limits | None = None, isolated: bool = False,
                 ledger: Ledger | None = None) -> None:
        self.policy = policy
        self.user = user
        self.role, role_spec = policy.role_for(user, role)
        self.max_rows = role_spec.max_rows
        self.limits = limits or role_limits(role_spec)
        self.timeout = self.limits.timeout_seconds
        self._owns_engine = engine is None
        self._engine = engine or open_engine(policy, backend, self.limits, isolated=isolated)
        self._guard = Guard(policy, user, self.role, self._engine.spec, self._engine.catalog(), self._engine.fixed_tables(),
                            self._engine.key_rows)
        self._filter_notices: dict[str, str | None] = {}
        self._ledger = ledger or MemoryLedger()  # privacy budgets; the gateway's are kept in its state

    @property
    def dialect(self) -> str:
        """The SQL dialect the guard reads queries in (its engine's): clients bind parameters in it."""
        return self._engine.spec.dialect

    def guard(self, sql: str) -> GuardedQuery:
        """Check and rewrite a query without running it."""
        return self._guard.rewrite(sql)

    def query(self, sql: str, cancel: Cancel | None = None) -> Result:
        """Run a query; what comes back is already shaped by the policy. ``cancel`` stops it from another thread."""
        guarded = self._guard.rewrite(sql)
        if guarded.noise is not None:
            return self._noisy(guarded, guarded.noise, cancel)
        self._refuse_disclosing(sql, guarded)
        reader = self._engine.stream(guarded.sql, timeout=self.timeout, cancel=cancel)
        return Result(reader, max_rows=self.max_rows, sql=guarded.sql, tables=guarded.tables,
                      notices=self.notices(guarded.tables), role=self.role)

    def _noisy(self, guarded: GuardedQuery, plan: NoisePlan, cancel: Cancel | None) -> Result:
        """Spend the query's epsilon (durably, before it runs), run it, and noise its (few) group rows."""
        require_opendp()  # a missing extra must not cost budget
        left = self._ledger.spend(self.user, plan.epsilon, budget=plan.budget, period_seconds=plan.period_seconds)
        table = add_noise(self._engine.stream(guarded.sql, timeout=self.timeout, cancel=cancel).read_all(), plan)
        notice = f"answers carry noise (differential privacy, epsilon {plan.epsilon:g}); {left:g} of {plan.budget:g} left"
        return Result(pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), max_rows=self.max_rows,
                      sql=guarded.sql, tables=guarded.tables, notices=(*self.notices(guarded.tables), notice),
                      role=self.role)

    def _unique_rows(self, decision: Decision, guarded: GuardedQuery) -> tuple[int, list[str]] | None:
        """Result rows unique on the role's quasi-identifiers, counted on the engine; None: none returned."""
        rules = self.policy.model.roles[self.role].disclosure
        quasi = quasi_columns(decision, rules) if rules is not None else []
        if not quasi:
            return None
        counted = self._engine.stream(unique_rows_sql(guarded.sql, quasi, self.dialect), timeout=self.timeout)
        return int(counted.read_all().column(0)[0].as_py()), quasi

    def _refuse_disclosing(self, sql: str, guarded: GuardedQuery) -> None:
        rules = self.policy.model.roles[self.role].disclosure
        if rules is None or rules.max_unique is None:
            return
        found = self._unique_rows(self.decide(sql, guarded), guarded)
        if found is not None and found[0] > rules.max_unique:
            raise QueryRejected(f"{unique_note(found[0], found[1], rules)}: more than role `{self.role}` may receive. "
                                "Aggregate them (GROUP BY with counts), or leave the quasi-identifiers out")

    def notices(self, tables: tuple[str, ...]) -> tuple[str, ...]:
        """What a result from ``tables`` should say about this role's row filters; worked out once a table."""
        for table in tables:
            if table not in self._filter_notices:
                attributes = self.policy.user(self.user).attributes
                self._filter_notices[table] = row_filter_notice(self.policy, self.role, attributes, table)
        return tuple(n for n in (self._filter_notices[t] for t in tables) if n is not None)

    def tables(self) -> list[TableInfo]:
        """The catalog as this user sees it: each column's action and the reason for it."""
        return catalog(self._guard)

    def explain(self, sql: str) -> Decision:
        """What a query will see, column by column, or why it is refused."""
        try:
            guarded = self._guard.rewrite(sql)
            types = self._engine.column_types(guarded.sql)
        except QueryRejected as exc:
            return refused(self.user, self.role, sql, exc, notes=self._aggregate_rules())
        decision = self.decide(sql, guarded, types)
        found = self._unique_rows(decision, guarded)
        if found is None:
            return decision
        rules = self.policy.model.roles[self.role].disclosure
        assert rules is not None  # found is None without it
        note = unique_note(found[0], found[1], rules)
        return dataclasses.replace(decision, unique_rows=found[0], notes=(*decision.notes, note))

    def _aggregate_rules(self) -> tuple[str, ...]:
        rules = self.policy.model.roles[self.role].aggregate
        return aggregate_rules(rules) if rules is not None else ()

    def decide(self, sql: str, guarded: GuardedQuery, types: list[tuple[str, str]] | None = None, *,
               limit: int = MAX_SQL_BYTES) -> Decision:
        """The decision on a query the guard accepted; ``types``, the engine's output columns, when known."""
        notes: tuple[str, ...] = (f"results are cut at {self.max_rows} rows for role {self.role}",) if self.max_rows else ()
        notes += aggregate_notes(self.policy.model.roles[self.role].aggregate, guarded.noise)
        return decide(self._guard, sql, guarded, types, notes=notes, limit=limit)

    def close(self) -> None:
        if self._owns_engine:
            self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session user={self.user!r} role={self.role!r} policy={self.policy.path.name!r}>"


def open_engine(policy: Policy, backend: str | None = None, limits: Limits | None = None, *,
                isolated: bool = False) -> Engine:
    """The engine for one family of sources: DuckDB files and Parquet folders (attached together), a PostgreSQL
    database or a Spark source; ``backend`` names one (see :mod:`saferoom.engines.registry`), else the first
    the policy has a source of.

    ``limits`` bound the memory, threads and spill space of an embedded engine; ``isolated`` runs each of
    its queries in a process of its own (the gateway's choice: see :mod:`saferoom.engines.isolated`)."""
    chosen = registry.for_session(policy, backend)
    check_filters(policy, chosen.spec)  # before anything opens: a filter the engine cannot run is the policy's error
    chosen.require_driver()
    return chosen.open(policy, registry.sources_of(policy, chosen), limits, isolated=isolated)


_NOBODY = ("nothing to connect to: run `saferoom login --url https://<gateway>` (with your personal token) to "
           "query through a gateway, or give a policy file and who is asking: connect('saferoom.yaml', user='alice')")


def _no_user_for_a_gateway(user: str | None, url: str) -> None:
    """Through a gateway, who is asking is whoever the token belongs to: a user named here would be ignored,
    and answers would silently come as someone else."""
    if user:
        raise UsageError(f"connect(user={user!r}) names who is asking on a policy file; through the gateway at {url} "
                         "you are the user your token belongs to. Drop user=, or give the policy file to open "
                         "it directly")


def connect(
    policy: str | Path | Policy | None = None,
    user: str | None = None,
    role: str | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    backend: str | None = None,
    socket: str | Path | None = None,
) -> SessionProtocol:
    """Open a session: embedded with a policy file, or through a gateway with a URL (or Unix socket) and a token.

    With no arguments: ``SAFEROOM_SOCKET`` (set inside a room) or ``SAFEROOM_URL``, with
    ``SAFEROOM_TOKEN`` (or what `saferoom login` saved), reach a gateway; otherwise
    ``SAFEROOM_POLICY`` and ``SAFEROOM_USER`` open the embedded engine.
    """
    socket = socket or (None if url or policy is not None else os.environ.get("SAFEROOM_SOCKET"))
    if socket:
        _no_user_for_a_gateway(user, f"unix:{socket}")
        return RemoteSession(None, token or os.environ.get("SAFEROOM_TOKEN") or "", role, socket=socket)
    embedded = policy is not None or bool(os.environ.get("SAFEROOM_POLICY"))
    saved = {} if embedded and not url else load_credentials()  # read once, and only when a gateway may be meant
    if url or (not embedded and (os.environ.get("SAFEROOM_URL") or saved.get("url"))):
        url = url or os.environ.get("SAFEROOM_URL") or saved.get("url")
        _no_user_for_a_gateway(user, str(url))
        token = token or os.environ.get("SAFEROOM_TOKEN") or (saved.get("token") if saved.get("url") == url else None)
        return RemoteSession(str(url), token or "", role)
    policy = policy or os.environ.get("SAFEROOM_POLICY") or DEFAULT_POLICY
    user = user or os.environ.get("SAFEROOM_USER")
    if not user:
        raise UsageError(_NOBODY if not Path(str(policy)).exists() else
                         "say who is asking: connect(policy, user='alice'), or set SAFEROOM_USER")
    loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    return Session(loaded, user, role, backend=backend)
