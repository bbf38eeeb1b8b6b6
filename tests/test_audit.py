"""The audit log's head: torn writes, lagging heads, and logs that lost records at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferoom.audit import HEAD, LOG, SLOT, AuditLog, _digest, read, read_head, verify
from saferoom.errors import AuditError


def written(folder: Path, n: int = 3) -> list[dict]:
    log = AuditLog(folder)
    try:
        return [log.append({"event": "decision", "user": "alice", "n": i}) for i in range(n)]
    finally:
        log.close()


def test_a_torn_head_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    records = written(tmp_path)
    head = (tmp_path / HEAD).read_bytes()
    assert len(head) == 2 * SLOT and read_head(tmp_path) == (3, records[-1]["hash"])
    newest = 0 if json.loads(head[:SLOT])["seq"] == 3 else 1
    torn = bytearray(head)
    torn[newest * SLOT + 10 : newest * SLOT + 40] = b"\x00" * 30  # a crash in the middle of the write
    (tmp_path / HEAD).write_bytes(bytes(torn))
    assert read_head(tmp_path) == (2, records[-2]["hash"])  # lags the log: allowed, nothing was lost
    assert verify(tmp_path).ok
    log = AuditLog(tmp_path)  # starts; its first head write goes to the torn slot, never over the whole one
    assert read_head(tmp_path) == (3, records[-1]["hash"])
    assert json.loads((tmp_path / HEAD).read_bytes()[(1 - newest) * SLOT :][:SLOT])["seq"] == 2
    log.append({"event": "decision", "user": "alice"})
    log.close()
    assert read_head(tmp_path)[0] == 4 and verify(tmp_path).ok


def test_records_cut_off_the_end_stop_the_log_from_starting(tmp_path: Path) -> None:
    written(tmp_path)
    lines = (tmp_path / LOG).read_text().splitlines(keepends=True)
    (tmp_path / LOG).write_text("".join(lines[:-1]))
    assert not verify(tmp_path).ok
    with pytest.raises(AuditError, match="lost records.*head says 3"):
        AuditLog(tmp_path)  # a restart must not hide the cut by writing a new head
    assert read_head(tmp_path)[0] == 3  # the evidence is untouched


def test_a_last_record_replaced_with_a_valid_chain_is_caught(tmp_path: Path) -> None:
    records = written(tmp_path)
    lines = (tmp_path / LOG).read_text().splitlines(keepends=True)
    forged = {"event": "decision", "user": "mallory", "n": 2, "seq": 3, "prev": records[1]["hash"]}
    forged["hash"] = _digest(forged["prev"], forged)
    (tmp_path / LOG).write_text("".join(lines[:-1]) + json.dumps(forged, sort_keys=True) + "\n")
    result = verify(tmp_path)
    assert not result.ok and "replaced" in (result.problem or "")
    with pytest.raises(AuditError, match="replaced"):
        AuditLog(tmp_path)


def test_a_deleted_head_is_refused_unless_the_log_is_empty(tmp_path: Path) -> None:
    written(tmp_path)
    (tmp_path / HEAD).unlink()
    with pytest.raises(AuditError, match="head is missing"):
        AuditLog(tmp_path)
    empty = tmp_path / "empty"
    AuditLog(empty).close()
    (empty / HEAD).unlink()
    AuditLog(empty).close()
    assert verify(empty).ok


def test_a_head_written_before_slots_is_still_read(tmp_path: Path) -> None:
    records = written(tmp_path)
    (tmp_path / HEAD).write_text(json.dumps({"seq": 3, "hash": records[-1]["hash"]}))
    assert read_head(tmp_path) == (3, records[-1]["hash"]) and verify(tmp_path).ok
    log = AuditLog(tmp_path)
    log.append({"event": "decision", "user": "alice"})
    log.close()
    assert [r["seq"] for r in read(tmp_path)] == [1, 2, 3, 4] and verify(tmp_path).ok


def test_a_failed_write_is_cut_back_and_the_log_goes_on_when_it_can(tmp_path: Path) -> None:
    import os

    log = AuditLog(tmp_path)
    try:
        log.append({"event": "decision", "user": "alice"})
        writable, log._fd = log._fd, os.open(tmp_path / LOG, os.O_RDONLY)  # every write now fails, as on a full disk
        with pytest.raises(AuditError, match="cannot be written"):
            log.append({"event": "decision", "user": "bob"})
        log.append_later({"event": "result", "user": "bob"})  # a queued record that fails is logged, not lost silently
        with pytest.raises(AuditError):
            log.append({"event": "decision", "user": "carol"})
        os.close(log._fd)
        log._fd = writable
        record = log.append({"event": "decision", "user": "dave"})
    finally:
        log.close()
    assert record["seq"] == 2  # the failed records took no place in the chain
    assert [r["user"] for r in read(tmp_path)] == ["alice", "dave"] and verify(tmp_path).ok


def test_one_writer_per_log(tmp_path: Path) -> None:
    first = AuditLog(tmp_path)
    try:
        with pytest.raises(AuditError, match="another gateway"):
            AuditLog(tmp_path)  # a second writer would fork the chain
        first.append({"event": "decision", "user": "alice"})
    finally:
        first.close()
    second = AuditLog(tmp_path)  # the lock goes with the writer
    second.append({"event": "decision", "user": "bob"})
    second.close()
    assert [r["seq"] for r in read(tmp_path)] == [1, 2] and verify(tmp_path).ok


def test_a_damaged_line_is_a_clear_audit_error_everywhere(tmp_path: Path) -> None:
    import subprocess
    import sys

    written(tmp_path)
    with (tmp_path / LOG).open("a") as log:
        log.write('{"not": "a record"}\n')  # whole line, valid JSON, not a record
    for reader in (lambda: read(tmp_path), lambda: read(tmp_path, limit=2), lambda: AuditLog(tmp_path)):
        with pytest.raises(AuditError, match="not a record"):
            reader()
    done = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "audit", "report", "--state",
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == AuditError.exit_code and "Traceback" not in done.stderr and "not a record" in done.stderr
    assert not verify(tmp_path).ok
