"""The audit log's head: torn writes, lagging heads, and logs that lost records at the end."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from saferoom.audit import GENESIS, HEAD, LOG, SLOT, AuditKey, AuditLog, PublicKey, _digest, read, read_head, verify
from saferoom.audit.checkpoints import checkpoint
from saferoom.audit.head import Head
from saferoom.errors import AuditError, UsageError
from saferoom.secrets import Secret


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


# Sealed logs: an audit key from outside the state folder, signed checkpoints, a forwarded copy -------------

KEY_TEXT = "audit-key-canary-5d1f0b7e9a3c4e2f8b6a1d0c"
KEY = AuditKey(Secret(KEY_TEXT))
OTHER = AuditKey(Secret("another-audit-key-0f9e8d7c6b5a49382716"))


def sealed(folder: Path, copy: Path, n: int = 8, every: int = 3) -> list[dict]:
    log = AuditLog(folder, key=KEY, forward=[f"file:{copy}"], checkpoint_every=every)
    try:
        return [log.append({"event": "decision", "user": "alice", "n": i}) for i in range(n)]
    finally:
        log.close()


def lines_of(folder: Path) -> list[dict]:
    return [json.loads(text) for text in (folder / LOG).read_text().splitlines()]


def rewrite(folder: Path, records: list[dict], key: AuditKey | None = None) -> None:
    """What whoever can write the state folder can do: recompute the chain (sealing it only with a key they
    hold), write the log and a head that matches it."""
    prev = GENESIS
    out = []
    for seq, original in enumerate(records, 1):
        record = {k: v for k, v in original.items() if k not in ("hash", "hmac")} | {"seq": seq, "prev": prev}
        if key is not None and record.get("event") == "checkpoint":
            record |= checkpoint(key, record["checkpoint"]["n"], seq - 1, prev)  # signed again, with their key
        record["hash"] = prev = _digest(prev, record)
        if key is not None:
            record["hmac"] = key.seal(prev)
        out.append(json.dumps(record, sort_keys=True))
    (folder / LOG).write_text("".join(text + "\n" for text in out))
    (folder / HEAD).unlink(missing_ok=True)
    head = Head(folder / HEAD, key)
    head.write(len(records), prev)
    head.close()


def delete_one(folder: Path) -> None:
    records = lines_of(folder)
    rewrite(folder, records[:1] + records[2:])


def alter_one(folder: Path) -> None:
    records = lines_of(folder)
    records[1]["user"] = "mallory"
    rewrite(folder, records)


def rechain_with_another_key(folder: Path) -> None:
    records = lines_of(folder)
    records[1]["user"] = "mallory"
    rewrite(folder, records, OTHER)


def truncate_the_end(folder: Path, saved_head: bytes, saved_length: int) -> None:
    """The end cut back to a point whose sealed head the attacker kept a copy of."""
    with (folder / LOG).open("r+b") as log:
        log.truncate(saved_length)
    (folder / HEAD).write_bytes(saved_head)


def cut_and_rehead(folder: Path) -> None:
    """The last records cut off and a head written for the new end (with a plain checksum: no key)."""
    kept = (folder / LOG).read_text().splitlines(keepends=True)[:-3]
    (folder / LOG).write_text("".join(kept))
    (folder / HEAD).unlink()
    head = Head(folder / HEAD)
    head.write(json.loads(kept[-1])["seq"], json.loads(kept[-1])["hash"])
    head.close()


def empty_the_log(folder: Path) -> None:
    (folder / LOG).write_text("")
    (folder / HEAD).unlink()


@pytest.fixture
def forged(tmp_path: Path):
    """A sealed log and its forwarded copy; ``forge`` applies one forgery to the state folder only."""
    state, copy = tmp_path / "state", tmp_path / "elsewhere" / "copy.log"
    copy.parent.mkdir()
    sealed(state, copy, n=4)
    saved_head, saved_length = (state / HEAD).read_bytes(), (state / LOG).stat().st_size
    sealed(state, copy, n=4)
    forgeries = {"delete": delete_one, "alter": alter_one, "rechain-another-key": rechain_with_another_key,
                 "cut-and-rehead": cut_and_rehead, "empty": empty_the_log,
                 "truncate": lambda folder: truncate_the_end(folder, saved_head, saved_length)}
    return state, copy, forgeries


# forgery -> (caught with the audit key alone, without the forwarded copy?)
FORGERIES = {"delete": True, "alter": True, "rechain-another-key": True, "cut-and-rehead": True, "truncate": False,
             "empty": False}


@pytest.mark.parametrize("name", FORGERIES)
def test_each_forgery_is_caught_against_the_forwarded_copy(forged, name: str) -> None:
    state, copy, forgeries = forged
    assert verify(state, key=KEY, checkpoints=copy).ok
    forgeries[name](state)
    with_key = verify(state, key=KEY, checkpoints=copy)
    public_only = verify(state, public_key=PublicKey.parse(str(KEY.public)), checkpoints=copy)
    assert not with_key.ok and not public_only.ok, (with_key, public_only)
    assert verify(state, key=KEY).ok is not FORGERIES[name]  # what the key alone can and cannot see (docs/gateway.md)


def test_a_plain_rechain_passes_as_unsealed_but_not_with_the_key(forged) -> None:
    state, copy, _ = forged
    records = [r for r in lines_of(state) if r["event"] != "checkpoint"]  # the signed ones cannot be redone
    records[1]["user"] = "mallory"
    rewrite(state, records)  # the chain and head recomputed with plain SHA-256, as anyone can
    assert verify(state).ok  # indistinguishable from a log written without a key: why the key matters
    result = verify(state, key=KEY)
    assert not result.ok and "nothing in this log is sealed" in (result.problem or "")
    assert "not the record" in (verify(state, key=KEY, checkpoints=copy).problem or "")
    assert "not the record" in (verify(state, public_key=KEY.public, checkpoints=copy).problem or "")


def test_an_emptied_log_is_caught_as_emptied(forged) -> None:
    state, copy, forgeries = forged
    forgeries["empty"](state)
    result = verify(state, public_key=KEY.public, checkpoints=copy)
    assert "ends at record 0" in (result.problem or "") and "emptied" in (result.problem or "")
    (state / LOG).unlink()
    assert not verify(state, public_key=KEY.public, checkpoints=copy).ok


def test_stripping_the_seals_after_sealed_records_is_caught(tmp_path: Path) -> None:
    state, copy = tmp_path / "state", tmp_path / "copy.log"
    sealed(state, copy)
    text = (state / LOG).read_text().splitlines()
    last = json.loads(text[-1])
    del last["hmac"]
    (state / LOG).write_text("\n".join(text[:-1] + [json.dumps(last, sort_keys=True)]) + "\n")
    result = verify(state, key=KEY)
    assert not result.ok and "no hmac" in (result.problem or "") and result.line == len(text)


def test_a_forged_checkpoint_in_the_copy_is_refused(tmp_path: Path) -> None:
    state, copy = tmp_path / "state", tmp_path / "copy.log"
    sealed(state, copy)
    text = copy.read_text().splitlines()
    index = next(i for i, t in enumerate(text) if '"checkpoint"' in t)
    record = json.loads(text[index])
    record["checkpoint"]["seq"] += 1
    text[index] = json.dumps(record)
    copy.write_text("\n".join(text) + "\n")
    result = verify(state, public_key=KEY.public, checkpoints=copy)
    assert not result.ok and "valid signature" in (result.problem or "")
    assert not verify(state, public_key=OTHER.public, checkpoints=tmp_path / "state" / LOG).ok  # another key


def test_checkpoints_every_n_records_on_a_timer_and_at_close(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, key=KEY, checkpoint_every=3, checkpoint_seconds=0.3)
    try:
        for i in range(4):
            log.append({"event": "decision", "n": i})
        assert [r["seq"] for r in read(tmp_path) if r["event"] == "checkpoint"] == [4]  # after records 1-3
        deadline = time.monotonic() + 10 * 0.3
        while len([r for r in read(tmp_path) if r["event"] == "checkpoint"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["checkpoint"]["seq"] for r in read(tmp_path) if r["event"] == "checkpoint"] == [3, 5]  # the timer
        log.append({"event": "decision", "n": 4})
    finally:
        log.close()
    marks = [r for r in read(tmp_path) if r["event"] == "checkpoint"]
    assert [m["checkpoint"]["n"] for m in marks] == [1, 2, 3] and marks[-1]["seq"] == read(tmp_path)[-1]["seq"]
    result = verify(tmp_path, key=KEY, checkpoints=tmp_path / LOG)
    assert result.ok and result.checkpoints == 3 and result.sealed == 8


def test_an_unsealed_log_verifies_as_before_and_goes_on_sealed(tmp_path: Path) -> None:
    old = written(tmp_path, 3)  # as written before audit keys
    assert "hmac" not in old[-1] and verify(tmp_path).ok
    log = AuditLog(tmp_path, key=KEY)
    log.append({"event": "decision", "user": "alice"})
    log.close()
    result = verify(tmp_path, key=KEY)
    assert result.ok and result.sealed == 2  # the new record and the close checkpoint
    assert any("first 3 were written before" in note for note in result.notes)
    assert not verify(tmp_path).ok  # sealed now: verifying it needs the key (or the copy and public key)


def test_a_sealed_log_goes_on_only_with_its_own_key(tmp_path: Path) -> None:
    sealed(tmp_path / "state", tmp_path / "copy.log")
    with pytest.raises(AuditError, match="sealed with an audit key"):
        AuditLog(tmp_path / "state")
    with pytest.raises(AuditError, match="another audit key") as refused:
        AuditLog(tmp_path / "state", key=OTHER)
    assert KEY_TEXT not in str(refused.value)
    AuditLog(tmp_path / "state", key=KEY).close()


def test_forwarding_fails_closed_and_catches_up(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy.log"  # its folder is missing: every write there fails
    log = AuditLog(tmp_path / "state", key=KEY, forward=[f"file:{copy}"])
    try:
        with pytest.raises(AuditError, match="could not be forwarded to file:.*local log"):
            log.append({"event": "decision", "user": "alice"})
        copy.parent.mkdir()
        log.append({"event": "decision", "user": "bob"})
    finally:
        log.close()
    users = [r.get("user") for r in read(tmp_path / "state")]
    assert users[:2] == ["alice", "bob"]  # the refused query's record stays in the log
    forwarded = [json.loads(t) for t in copy.read_text().splitlines() if t.strip()]
    assert [r.get("user") for r in forwarded][:2] == ["alice", "bob"]  # and reached the copy when it could
    assert verify(tmp_path / "state", key=KEY, checkpoints=copy).ok


@pytest.mark.parametrize("spec", ["syslog://127.0.0.1:514", "syslog+tcp://:514", "syslog+tcp://host:99999", "file:", "/tmp/x"])
def test_a_bad_forward_destination_is_a_clear_error_before_anything_is_opened(tmp_path: Path, spec: str) -> None:
    with pytest.raises(UsageError, match="syslog\\+tcp://HOST:PORT or file:PATH"):
        AuditLog(tmp_path / "state", forward=[spec])
    with pytest.raises(UsageError, match="inside the state folder"):
        AuditLog(tmp_path / "state", forward=[f"file:{tmp_path / 'state' / 'copy.log'}"])
    assert not (tmp_path / "state").exists()


def test_the_audit_key_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    monkeypatch.setenv("SAFEROOM_TEST_AUDIT_KEY", KEY_TEXT)
    key = AuditKey.resolve("env:SAFEROOM_TEST_AUDIT_KEY")
    assert KEY_TEXT not in repr(key) + str(key) + repr(key.public) + str(key.public)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    monkeypatch.setenv("SAFEROOM_TEST_AUDIT_KEY", "short")
    with pytest.raises(UsageError, match="too short") as short:
        AuditKey.resolve("env:SAFEROOM_TEST_AUDIT_KEY")
    assert "short" not in str(short.value).replace("too short", "")
    with pytest.raises(UsageError, match="SAFEROOM_MISSING_KEY is not set"):
        AuditKey.resolve("env:SAFEROOM_MISSING_KEY")
    with pytest.raises(UsageError, match="reference"):
        AuditKey.resolve(KEY_TEXT)  # a value, not a reference: refused without echoing it
    sealed(tmp_path / "state", tmp_path / "copy.log")
    stored = b"".join(p.read_bytes() for p in [tmp_path / "copy.log", *(tmp_path / "state").iterdir()])
    assert KEY_TEXT.encode() not in stored


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_lines_read_backwards_know_where_they_start(tmp_path: Path, block: int) -> None:
    from saferoom.audit.records import lines_backwards

    written(tmp_path, 5)
    data = (tmp_path / LOG).read_bytes()
    starts = [0] + [i + 1 for i, byte in enumerate(data[:-1]) if byte == ord("\n")]
    found = list(lines_backwards(tmp_path / LOG, block))
    assert [offset for offset, _ in found] == starts[::-1]
    assert all(data[offset:].startswith(text + b"\n") for offset, text in found)


@pytest.mark.parametrize("sealed", [False, True])
def test_verify_on_a_log_being_written_sees_no_problem(tmp_path: Path, sealed: bool) -> None:
    """An administrator may verify a live gateway's log: records and heads written meanwhile are no forgery."""
    key = KEY if sealed else None
    log = AuditLog(tmp_path, key=key)
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            log.append({"event": "decision", "user": "alice"})

    writer = threading.Thread(target=write)
    writer.start()
    try:
        results = [verify(tmp_path, key=key) for _ in range(50)]
        deadline = time.monotonic() + 600  # a ceiling for a hang only: on a busy machine the writer may lag
        while results[-1].records <= results[0].records + 1 and time.monotonic() < deadline:
            results.append(verify(tmp_path, key=key))  # until the log has grown while it was verified
    finally:
        stop.set()
        writer.join()
        log.close()
    assert [r.problem for r in results if not r.ok] == []
    assert results[-1].records > results[0].records  # the log grew while it was verified
