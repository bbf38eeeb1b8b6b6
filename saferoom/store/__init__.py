"""Everything the gateway keeps, behind one store: a state folder (the embedded default) or PostgreSQL.

``--state DIR`` keeps tokens, the audit chain and records in files, for one gateway
(:mod:`saferoom.store.files`); ``--state postgresql://…`` keeps them in PostgreSQL, for any number of gateways
behind one address (:mod:`saferoom.store.postgres`). Both follow :class:`~saferoom.store.base.Store`.
"""

from __future__ import annotations

from pathlib import Path

from saferoom.store.base import AuditWriter, Store, Versioned
from saferoom.store.files import FileStore

URL_SCHEMES = ("postgresql://", "postgres://")

__all__ = ["AuditWriter", "FileStore", "Store", "Versioned", "is_url", "open_store"]


def is_url(state: str | Path) -> bool:
    return str(state).startswith(URL_SCHEMES)


def open_store(state: str | Path) -> Store:
    """The store ``state`` names: a PostgreSQL URL, or a folder."""
    if is_url(state):
        from saferoom.store.postgres import PostgresStore

        return PostgresStore(str(state))
    return FileStore(Path(state))
