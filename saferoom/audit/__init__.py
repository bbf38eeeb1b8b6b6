"""The audit log: one JSON line per event, each carrying the hash of the one before.

Every record holds ``seq`` (1, 2, 3, …), ``prev`` (the previous record's hash) and ``hash`` = SHA-256 of
``prev`` and the record's canonical JSON. Editing, deleting or reordering any record breaks the chain; the
head (:mod:`~saferoom.audit.head`) makes cutting records off the end detectable too.

A hash chain alone protects nothing from whoever can write the state folder: they can recompute it. Given
an audit key from outside the folder (:mod:`~saferoom.audit.keys`), each record also carries ``hmac`` =
HMAC-SHA256 of its hash, the head is sealed the same way, and signed checkpoints
(:mod:`~saferoom.audit.checkpoints`) are forwarded with every record to places the gateway's host cannot
rewrite (:mod:`~saferoom.audit.forward`). :func:`verify` says what it could and could not check.
"""

from saferoom.audit.checkpoints import CHECKPOINT
from saferoom.audit.forward import ForwardError
from saferoom.audit.head import SLOT, read_head
from saferoom.audit.keys import AuditKey, PublicKey
from saferoom.audit.records import GENESIS, HEAD, LOG, _digest, newest_first, now, read, report
from saferoom.audit.verify import Verification, verify
from saferoom.audit.writer import AuditLog

__all__ = [
    "CHECKPOINT", "GENESIS", "HEAD", "LOG", "SLOT", "AuditKey", "AuditLog", "ForwardError", "PublicKey",
    "Verification", "_digest", "newest_first", "now", "read", "read_head", "report", "verify",
]
