"""Differential privacy at the session: noise from OpenDP, and each user's privacy budget.

The guard (:mod:`saferoom.guard.aggregate_dp`) bounds what one entity adds to a query and says which output
columns to noise; here each is given Laplace noise by OpenDP's vector mechanism, calibrated so the whole
query costs ``epsilon_per_query``, and that epsilon is spent from the user's budget *before* the query runs.
A query that would overspend is refused. Noise comes from OpenDP's own generator: it is never reproducible,
so the same query asked twice gets two answers, and spends twice.

A :class:`Ledger` keeps the spends: :class:`MemoryLedger` for an embedded session (it lasts the session; an
embedded user holds the database file anyway), :class:`FileLedger` for the gateway, in its state folder,
so that a budget survives a restart.

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

import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saferoom.errors import LimitExceeded, SaferoomError, UsageError
from saferoom.files import fsync_dir, try_lock
from saferoom.guard.aggregate_dp import COUNT, MEAN, NoisePlan, Noisy

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


class FileLedger(MemoryLedger):
    """Spends in ``folder/budget.json``, replaced atomically on each spend; the folder is this process's alone
    (a lock file held while it lives), as the gateway's state is."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = folder / "budget.json"
        held: IO[str] | None = try_lock(folder / "budget.lock")
        if held is None:
            raise SaferoomError(f"another process keeps the privacy budgets in {folder}; one gateway per state folder")
        self._held = held
        self._spends = _read(self._path)

    def _saved(self, spends: Spends) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as handle:
            json.dump(spends, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._path)
        fsync_dir(self._path.parent)

    def close(self) -> None:
        self._held.close()


def _read(path: Path) -> Spends:
    """The spends on file; a file that cannot be read is an error, never an empty (fresh) budget."""
    if not path.exists():
        return {}
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SaferoomError(f"the privacy budgets in {path} cannot be read ({exc}); restore the file from a backup "
                            "(starting afresh would give every user their budget again)") from None
    return {str(user): [[float(t), float(e)] for t, e in spends] for user, spends in data.items()}


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
    dp = require_opendp()
    epsilon = plan.epsilon / max(plan.releases, 1)
    for column in plan.columns:
        table = table.set_column(column.index, table.field(column.index).name, _noised(dp, table, column, plan, epsilon))
    return table


def _noised(dp: Any, table: pa.Table, column: Noisy, plan: NoisePlan, epsilon: float) -> pa.Array:
    values = table.column(column.index)
    if column.kind == MEAN:
        sums = _laplace(dp, pc.list_element(values, 0), column.sensitivity, epsilon)
        counts = np.maximum(_laplace(dp, pc.list_element(values, 1), plan.rows_per_entity, epsilon), 1.0)
        return pa.array(sums / counts)
    noisy = _laplace(dp, values, column.sensitivity, epsilon)
    return pa.array(np.maximum(np.rint(noisy), 0).astype(np.int64)) if column.kind == COUNT else pa.array(noisy)


def _laplace(dp: Any, values: pa.ChunkedArray | pa.Array, sensitivity: float, epsilon: float) -> np.ndarray:
    """OpenDP's Laplace mechanism over the whole column at once, its privacy loss checked by OpenDP's own map."""
    if len(values) == 0:
        return np.zeros(0)
    numbers = pc.fill_null(pc.cast(values, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float))
    mechanism = dp.m.make_laplace(*space, scale=max(sensitivity, 1e-12) / epsilon)
    if mechanism.map(float(sensitivity)) > epsilon * (1 + 1e-9):
        raise SaferoomError("OpenDP's accounting of the noise exceeds the query's epsilon; nothing was returned")
    return np.asarray(mechanism(numbers.tolist()), dtype=np.float64)
