"""Differential privacy at the session: noise from OpenDP, and each user's privacy budget.

The guard (:mod:`saferoom.guard.aggregate_dp`) bounds what one entity adds to a query and says which output
columns to noise; here each is given Laplace noise by OpenDP's vector mechanism, calibrated so the whole
query costs ``epsilon_per_query``, and that epsilon is spent from the user's budget *before* the query runs.
A query that would overspend is refused. Noise comes from OpenDP's own generator: it is never reproducible,
so the same query asked twice gets two answers, and spends twice.

A :class:`Ledger` keeps the spends: :class:`MemoryLedger` for an embedded session (it lasts the session; an
embedded user holds the database file anyway), :class:`StoreLedger` for the gateway, in its state store,
so that a budget survives a restart and is shared by every gateway on the store.

>>> ledger = MemoryLedger()
>>> ledger.spend("mo", 0.1, budget=0.25, period_seconds=86400)
0.15
>>> ledger.spend("mo", 0.1, budget=0.25, period_seconds=86400)
0.05
>>> ledger.spend("mo", 0.1, budget=0.25, period_seconds=86400)
Traceback (most recent call last):
saferoom.errors.LimitExceeded: the privacy budget of `mo` is spent: 0.2 of 0.25 used in the last 1 days, and a query costs 0.1. Ask again when older queries leave the window, or ask the security team for a larger budget
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saferoom.errors import LimitExceeded, SaferoomError, StateConflict, UsageError
from saferoom.guard.aggregate_dp import COUNT, MEAN, NoisePlan, Noisy
from saferoom.store.base import Versioned

BUDGETS = "budgets"  # the store's namespace for privacy budgets
Spends = dict[str, list[list[float]]]  # user -> [time, epsilon] of each spend still inside its period


class Ledger(Protocol):
    def spend(self, user: str, epsilon: float, *, budget: float, period_seconds: int) -> float: ...


class MemoryLedger:
    """Spends kept in memory: the embedded session's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spends: Spends = {}

    def spend(self, user: str, epsilon: float, *, budget: float, period_seconds: int) -> float:
        """Record ``epsilon`` spent by ``user`` and return what is left, or refuse when it would overspend."""
        with self._lock:
            left = _spend(self._spends, user, epsilon, budget, period_seconds)
            self._saved(self._spends)
            return left

    def _saved(self, spends: Spends) -> None:
        """Make the spends durable before the query runs (nothing to do in memory)."""


class StoreLedger:
    """Spends in the gateway's state store (files or PostgreSQL), one record per user, changed by
    compare-and-set: gateways sharing one store never both spend the same remainder, and the spend is
    durable before the query runs."""

    def __init__(self, store: Records) -> None:
        self._store = store

    def spend(self, user: str, epsilon: float, *, budget: float, period_seconds: int) -> float:
        """Record ``epsilon`` spent by ``user`` and return what is left, or refuse when it would overspend."""
        while True:
            current = self._store.get(BUDGETS, user)
            spends: Spends = {user: _spends_of(current.value if current else {})}
            left = _spend(spends, user, epsilon, budget, period_seconds)
            try:
                self._store.put(BUDGETS, user, {"spends": spends[user]}, current.version if current else 0)
            except StateConflict:
                continue  # another gateway spent first: read again
            return left


class Records(Protocol):
    """The part of the state store a ledger uses (see :class:`saferoom.store.Store`)."""

    def get(self, namespace: str, key: str) -> Versioned | None: ...
    def put(self, namespace: str, key: str, value: dict[str, Any], version: int) -> Versioned: ...


def _spends_of(value: dict[str, Any]) -> list[list[float]]:
    """The spends on record; a record of another shape is an error, never an empty (fresh) budget."""
    try:
        return [[float(t), float(e)] for t, e in value.get("spends", [])]
    except (TypeError, ValueError):
        raise SaferoomError("a privacy budget in the gateway's state cannot be read; restore the state from a "
                            "backup (starting afresh would give the user their budget again)") from None


def _spend(spends: Spends, user: str, epsilon: float, budget: float, period: int) -> float:
    now = time.time()
    kept = [s for s in spends.get(user, []) if s[0] > now - period]
    used = sum(e for _, e in kept)
    if used + epsilon > budget + 1e-9:
        raise LimitExceeded(f"the privacy budget of `{user}` is spent: {used:g} of {budget:g} used in the last "
                            f"{period // 86400} days, and a query costs {epsilon:g}. Ask again when older queries "
                            "leave the window, or ask the security team for a larger budget")
    spends[user] = [*kept, [now, epsilon]]
    return round(budget - used - epsilon, 12)


def require_opendp() -> Any:
    """OpenDP's prelude, or a UsageError naming the extra that installs it."""
    try:
        import opendp.prelude as dp
    except ImportError:
        raise UsageError("this role answers with differential privacy, which needs OpenDP: "
                         "pip install 'saferoom[dp]'") from None
    dp.enable_features("contrib")
    return dp


def add_noise(table: pa.Table, plan: NoisePlan) -> pa.Table:
    """The result with each planned column noised; ``plan.epsilon`` is split evenly over the noised values."""
    epsilon = plan.epsilon / max(plan.releases, 1)
    for column in plan.columns:
        table = table.set_column(column.index, table.field(column.index).name, _noised(table, column, plan, epsilon))
    return table


def _noised(table: pa.Table, column: Noisy, plan: NoisePlan, epsilon: float) -> pa.Array:
    values = table.column(column.index)
    if column.kind == MEAN:
        sums = _laplace(pc.list_element(values, 0), column.sensitivity, epsilon)
        counts = np.maximum(_laplace(pc.list_element(values, 1), plan.rows_per_entity, epsilon), 1.0)
        return pa.array(sums / counts)
    noisy = _laplace(values, column.sensitivity, epsilon)
    return pa.array(np.maximum(np.rint(noisy), 0).astype(np.int64)) if column.kind == COUNT else pa.array(noisy)


def _laplace(values: pa.ChunkedArray | pa.Array, sensitivity: float, epsilon: float) -> np.ndarray:
    """OpenDP's Laplace mechanism over the whole column at once, its privacy loss checked by OpenDP's own map."""
    if len(values) == 0:
        return np.zeros(0)
    # OpenDP takes a Python list, converting each value in turn (about 20 us a value), so the list is made
    # straight from Arrow: a cast and a fill kernel cost more than that for the few rows of a noised result
    numbers = [0.0 if value is None else float(value) for value in values.to_pylist()]
    return np.asarray(_mechanism(float(sensitivity), epsilon)(numbers), dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _mechanism(sensitivity: float, epsilon: float) -> Any:
    """OpenDP's Laplace mechanism over a vector of any length, made and checked once per (sensitivity, epsilon):
    building it and its domains took most of a DP query over a small table (about 1 ms of 1.5). A measurement
    is a description; each call draws fresh noise, so reusing it changes no answer's distribution."""
    dp = require_opendp()
    space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float))
    mechanism = dp.m.make_laplace(*space, scale=max(sensitivity, 1e-12) / epsilon)
    if mechanism.map(sensitivity) > epsilon * (1 + 1e-9):
        raise SaferoomError("OpenDP's accounting of the noise exceeds the query's epsilon; nothing was returned")
    return mechanism
