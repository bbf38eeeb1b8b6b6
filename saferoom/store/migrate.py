"""`saferoom state migrate`: a state folder moved into PostgreSQL, in one transaction, its chain verified twice.

The folder's chain is verified first (a broken one is refused: it would be passed off as whole), then
copied, then verified again as PostgreSQL holds it, inside the same transaction: if anything differs
nothing is committed. A target that already holds records is refused unless they are the beginning of
the same chain (a migration run again after the folder grew); tokens and records already there are kept,
a revocation on either side stays revoked. What later capabilities keep in the folder their own way
(requests and their files) is copied by the ``also`` steps the caller passes, in the same transaction.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferoom.audit import LOG, AuditKey, verify
from saferoom.errors import AuditError, UsageError
from saferoom.identity import TOKENS, TokenRecord
from saferoom.store.files import RECORDS
from saferoom.store.pgaudit import CHAIN_LOCK, export, insert, last_checkpoint
from saferoom.store.postgres import PostgresStore, token_row

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class Migrated:
    records: int  # copied now
    kept: int  # already in PostgreSQL, the same records
    tokens: int
    namespaces: int
    also: tuple[int, ...] = ()  # what each of the ``also`` steps copied


Step = Callable[["psycopg.Connection[Any]"], int]


def migrate(folder: Path, url: str, key: AuditKey | None = None, also: Sequence[Step] = ()) -> Migrated:
    """Move the state in ``folder`` into the database ``url`` (see the module's docstring)."""
    if not (folder / LOG).exists() and not (folder / TOKENS).exists():
        raise UsageError(f"no gateway state in {folder} (no audit.log, no tokens.json); give the folder "
                         "`saferoom serve --state` wrote to")
    checked = verify(folder, key=key) if (folder / LOG).exists() else None
    if checked is not None and not checked.ok:
        raise AuditError(f"the audit log in {folder} does not verify, so it is not moved: {checked.problem} "
                         f"(line {checked.line}); run `saferoom audit verify --state {folder}`")
    lines = _lines(folder)
    store = PostgresStore(url)
    try:
        with store.db.transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))  # no gateway writes meanwhile
            kept = _same_chain(connection, lines)
            _copy_chain(connection, lines[kept:], key)
            tokens = _copy_tokens(connection, folder)
            namespaces = _copy_records(connection, folder)
            copied = tuple(step(connection) for step in also)
            _verify_arrival(connection, key, len(lines))
    finally:
        store.close()
    return Migrated(len(lines) - kept, kept, tokens, namespaces, copied)


def _lines(folder: Path) -> list[str]:
    path = folder / LOG
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [text.rstrip("\n") for text in lines if text.strip()]


def _same_chain(connection: psycopg.Connection[Any], lines: list[str]) -> int:
    """How many of ``lines`` PostgreSQL holds already; refused unless they are the same records."""
    held = connection.execute("SELECT seq, hash FROM saferoom_audit ORDER BY seq").fetchall()
    ours = [(record["seq"], record["hash"]) for record in map(json.loads, lines[: len(held)])]
    if len(held) > len(lines) or [(int(s), str(h)) for s, h in held] != ours:
        raise UsageError("the PostgreSQL state already holds another audit chain; migrate into an empty database "
                         "(or the one this folder was migrated to before)")
    return len(held)


def _copy_chain(connection: psycopg.Connection[Any], lines: list[str], key: AuditKey | None) -> None:
    if not lines:
        return
    insert(connection, lines)
    last = json.loads(lines[-1])
    sealed = key is not None and "hmac" in last
    n, covered = last_checkpoint(lines)
    connection.execute("UPDATE saferoom_audit_head SET seq = %s, hash = %s, mac = %s, checkpoint_n = %s, "
                       "checkpoint_seq = GREATEST(checkpoint_seq, %s) WHERE id = 1",
                       (last["seq"], last["hash"], key.head_mac(last["seq"], last["hash"]) if sealed and key else None,
                        n, covered))


def _copy_tokens(connection: psycopg.Connection[Any], folder: Path) -> int:
    path = folder / TOKENS
    if not path.exists():
        return 0
    records = [TokenRecord(**item) for item in json.loads(path.read_text())]
    with connection.cursor() as cursor:
        cursor.executemany("INSERT INTO saferoom_tokens VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                           "SET revoked = saferoom_tokens.revoked OR excluded.revoked", [token_row(r) for r in records])
    return len(records)


def _copy_records(connection: psycopg.Connection[Any], folder: Path) -> int:
    from psycopg.types.json import Jsonb

    files = sorted((folder / RECORDS).glob("*.json")) if (folder / RECORDS).is_dir() else []
    for path in files:
        items = json.loads(path.read_text())
        with connection.cursor() as cursor:
            cursor.executemany("INSERT INTO saferoom_records VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                               [(path.stem, k, v["version"], Jsonb(v["value"])) for k, v in items.items()])
    return len(files)


def _verify_arrival(connection: psycopg.Connection[Any], key: AuditKey | None, expected: int) -> None:
    """The chain as PostgreSQL now holds it (not yet committed) verifies, and is as long as the folder's."""
    with tempfile.TemporaryDirectory(prefix="saferoom-migrate-") as scratch:
        export(connection, Path(scratch))
        arrived = verify(Path(scratch), key=key)
    if not arrived.ok or arrived.records != expected:
        raise AuditError(f"the audit chain does not verify in PostgreSQL after copying ({arrived.problem}); "
                         "nothing was committed")
