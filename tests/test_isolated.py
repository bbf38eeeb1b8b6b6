"""The gateway's engine: each query in a worker process, stopped, demoted or killed there, never in the server."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from saferoom import priority
from saferoom.engines.base import Cancel
from saferoom.engines.duckdb import DatabaseFile
from saferoom.engines.isolated import KILL_AFTER_SECONDS, ProcessEngine
from saferoom.errors import EngineError, LimitExceeded, QueryCancelled
from saferoom.policy.limits import GATEWAY_DEFAULTS
from saferoom.result import Result
from saferoom.secrets import Secret

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


@pytest.fixture
def engine(room) -> Iterator[ProcessEngine]:
    isolated = ProcessEngine({"prod": DatabaseFile(room.database)}, Secret(room.key), GATEWAY_DEFAULTS)
    try:
        yield isolated
    finally:
        isolated.close()


def running_worker(engine: ProcessEngine, sql: str, cancel: Cancel) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``sql`` on a thread; returns the thread and where its error lands."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.stream(sql, cancel=cancel).read_all()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def busy_worker(engine: ProcessEngine):  # type: ignore[no-untyped-def]
    """The worker running the test's query, once it has one."""
    import time

    deadline = time.monotonic() + 600
    while not engine._busy():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return next(iter(engine._busy()))


def workers_of(engine: ProcessEngine) -> set[int]:
    return {w.process.pid for w in [*engine._idle, *engine._busy()]}


def test_results_and_tokens_match_the_in_process_engine(engine: ProcessEngine, room) -> None:
    table = engine.stream("select customer_id, __saferoom_token(customer_id) as t from prod.customers order by 1 limit 3").read_all()
    assert table.column("t").to_pylist() == [room.token(i) for i in table.column("customer_id").to_pylist()]
    assert ("prod", "main", "customers") in engine.catalog()
    assert engine.column_types("select 1 as one") == [("one", "INTEGER")]


def test_whole_batches_are_forwarded_as_the_workers_bytes_and_a_cut_one_is_not(engine: ProcessEngine) -> None:
    """The gateway sends a batch on as the IPC message the worker wrote (no second serialization): the very bytes
    Arrow would write for it. A batch cut at max_rows has fewer rows than its message: it is serialized anew."""
    sql = "select range as id, 'row ' || range as label, range * 0.5 as half from range(200000)"
    result = Result(engine.stream(sql, batch_size=50_000), max_rows=120_000)
    arrived = [(batch, result.ipc_message(batch)) for batch in result.stream()]  # asked as each arrives, as the body does
    batches, messages = [b for b, _ in arrived], [m for _, m in arrived]
    assert sum(b.num_rows for b in batches) == 120_000 and result.truncated_so_far
    forwarded = [m for m in messages if m is not None]
    assert forwarded and messages[-1] is None  # the last batch was cut
    for batch, message in arrived:
        if message is not None:
            assert message.equals(batch.serialize())
            assert pa.ipc.read_record_batch(message, result.schema).equals(batch)


def test_a_batch_not_read_from_the_message_is_not_taken_for_it(engine: ProcessEngine) -> None:
    result = Result(engine.stream("select range as id from range(10)"), max_rows=None)
    batch = next(result.stream())
    assert result.ipc_message(batch) is not None
    assert result.ipc_message(pa.record_batch([pa.array(range(10), pa.int64())], names=["id"])) is None
    result.close()


def test_a_timeout_and_a_hang_up_stop_the_query_in_its_process(engine: ProcessEngine) -> None:
    with pytest.raises(LimitExceeded, match="timeout_seconds"):
        engine.stream(RUNAWAY, timeout=0.5).read_all()
    cancel = Cancel()
    thread, errors = running_worker(engine, RUNAWAY, cancel)
    cancel("the client hung up")
    thread.join()
    assert isinstance(errors[0], QueryCancelled) and "hung up" in str(errors[0])
    assert engine.stream("select 1 as n").read_all().to_pylist() == [{"n": 1}]


def test_a_worker_that_does_not_answer_a_stop_is_killed(engine: ProcessEngine) -> None:
    cancel = Cancel()
    thread, errors = running_worker(engine, RUNAWAY, cancel)
    worker = busy_worker(engine)
    os.kill(worker.process.pid, signal.SIGSTOP)  # deaf to interrupts, as a process stuck in one allocation is
    cancel("the client hung up")
    thread.join(timeout=KILL_AFTER_SECONDS * 20)  # a ceiling for a hang only: the kill comes after KILL_AFTER_SECONDS
    assert not thread.is_alive() and isinstance(errors[0], QueryCancelled)
    assert not worker.process.is_alive()
    assert worker.spill and not Path(worker.spill).exists()  # what a killed worker spilled does not stay on disk
    assert engine.stream("select 2 as n").read_all().to_pylist() == [{"n": 2}]


def test_a_worker_killed_mid_query_is_an_error_and_the_next_query_runs(engine: ProcessEngine) -> None:
    cancel = Cancel()
    thread, errors = running_worker(engine, RUNAWAY, cancel)
    worker = busy_worker(engine)
    os.kill(worker.process.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    thread.join()
    assert isinstance(errors[0], EngineError) and "ended unexpectedly" in str(errors[0])
    assert worker.spill and not Path(worker.spill).exists()
    assert engine.stream("select 3 as n").read_all().to_pylist() == [{"n": 3}]


def test_a_long_query_yields_the_processor_and_its_worker_is_not_reused(engine: ProcessEngine) -> None:
    cancel = Cancel()
    thread, errors = running_worker(engine, RUNAWAY, cancel)
    worker = busy_worker(engine)
    import time

    deadline = time.monotonic() + 600
    while os.getpriority(os.PRIO_PROCESS, worker.process.pid) != priority.LOW:
        assert time.monotonic() < deadline, "the long query's process was never lowered"
        time.sleep(0.05)
    threads = os.listdir(f"/proc/{worker.process.pid}/task")
    assert all(os.getpriority(os.PRIO_PROCESS, int(t)) == priority.LOW for t in threads)
    assert worker.handle in priority.BACKGROUND._processes  # stopped whenever a short query runs
    cancel("done")
    thread.join()
    assert worker not in engine._idle and not worker.process.is_alive()
    assert worker.handle not in priority.BACKGROUND._processes


def test_a_user_with_a_long_query_running_starts_the_next_as_long_work(engine: ProcessEngine) -> None:
    """So that one user's many queries cannot each take a short query's share of the processor from others."""
    import time

    cancel = Cancel()
    thread, _ = running_worker(engine, RUNAWAY, cancel)
    try:
        worker = busy_worker(engine)
        deadline = time.monotonic() + 600
        while not worker.lowered:
            assert time.monotonic() < deadline, "the long query was never lowered"
            time.sleep(0.05)
        assert engine.stream("select 4 as n").read_all().to_pylist() == [{"n": 4}]  # it still runs: in the gaps
        assert engine._idle == []  # its worker was lowered at once, so it is not kept
    finally:
        cancel("done")
        thread.join()
    assert engine.stream("select 5 as n").read_all().to_pylist() == [{"n": 5}]
    assert engine._idle == []  # a long query ended a moment ago (abandoned, say, and about to be sent again)
    quiet = time.monotonic() + priority.RECENT_SECONDS
    while time.monotonic() < quiet:  # small queries all along, started as long work: they keep no one behind
        assert engine.stream("select 6 as n").read_all().to_pylist() == [{"n": 6}]
    assert engine.stream("select 6 as n").read_all().to_pylist() == [{"n": 6}]
    assert len(engine._idle) == 1 and not engine._idle[0].lowered  # nothing long lately: a short start again


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


def test_long_work_is_stopped_while_short_work_runs_and_continues_after() -> None:
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    background = priority.Background()
    handle = priority.Process(child.pid)
    try:
        background.add(handle)
        background.enter()
        background.enter()  # two short queries at once
        deadline = time.monotonic() + 600
        while state(child.pid) != "T":
            assert time.monotonic() < deadline, "the long process was never stopped"
            time.sleep(0.01)
        background.leave()
        assert state(child.pid) == "T"  # one short query still runs
        background.leave()
        while state(child.pid) == "T":
            assert time.monotonic() < deadline, "the long process was never continued"
            time.sleep(0.01)
        background.enter()
        background.discard(handle)  # ending (or told to stop): it runs, whatever else runs
        while state(child.pid) == "T":
            assert time.monotonic() < deadline, "a discarded process stayed stopped"
            time.sleep(0.01)
        background.add(handle)  # added while short work runs: stopped at once
        while state(child.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()


def test_the_key_is_in_no_command_line_or_environment(engine: ProcessEngine, room) -> None:
    engine.stream("select 1").read_all()
    assert workers_of(engine)
    for pid in workers_of(engine):
        for part in ("cmdline", "environ"):
            assert room.key.encode() not in Path(f"/proc/{pid}/{part}").read_bytes()


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_no_worker_outlives_a_gateway_killed_with_sigkill(tmp_path: Path) -> None:
    import httpx

    from tests.gateway_helpers import HUNG, descendants, eventually
    from tests.test_gateway_abuse import RUNAWAY as ENDLESS
    from tests.test_gateway_abuse import open_gateway

    def ask(url: str, token: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(f"{url}/v1/query", json={"sql": ENDLESS}, headers={"Authorization": f"Bearer {token}"}, timeout=HUNG)

    server = open_gateway(tmp_path)
    try:
        asking = threading.Thread(target=ask, args=(server.url, server.token("bob")))
        asking.start()
        assert server.process is not None
        eventually(lambda: len(descendants(server.process.pid)) >= 2, "a worker running the endless query")
        workers = descendants(server.process.pid)
        server.kill9()
        eventually(lambda: not any(alive(pid) for pid in workers), "every worker gone with the server")
        asking.join()
    finally:
        server.stop()


def test_closing_the_engine_stops_idle_workers_now_and_a_running_one_after_its_query(engine: ProcessEngine) -> None:
    cancel = Cancel()
    thread, errors = running_worker(engine, RUNAWAY, cancel)
    running = busy_worker(engine)
    engine.stream("select 1").read_all()  # on a second worker, idle afterwards
    idle = list(engine._idle)
    engine.close()  # as a policy reload does with the old policy's sessions
    assert idle and not any(w.process.is_alive() for w in idle)
    assert running.process.is_alive()  # its query goes on until it ends
    cancel("done")
    thread.join()
    assert not running.process.is_alive() and not engine._idle


def test_long_work_is_slowed_not_starved_while_short_work_never_stops() -> None:
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    background = priority.Background()
    handle = priority.Process(child.pid)
    try:
        background.add(handle)
        background.enter()  # and never leaves
        deadline = time.monotonic() + 600
        for wanted in ("T", "R", "T"):  # stopped, its share, stopped again
            while (state(child.pid) == "T") != (wanted == "T"):
                assert time.monotonic() < deadline, f"never {wanted}"
                time.sleep(0.001)
    finally:
        child.kill()
        child.wait()


def test_a_stop_outliving_its_worker_ends_and_never_signals_the_pid_again() -> None:
    """A stop repeats until its query is done or its worker is gone. Once the worker is reaped its pid may be
    another process's, or a thread's of this one (a signal to a thread's id reaches its whole process: it
    once stopped the test run), so the stop goes through a pidfd and its loop ends."""
    import time

    from saferoom.engines import isolated
    from saferoom.engines.base import until_done

    parent, child = isolated._CONTEXT.Pipe()
    process = isolated._CONTEXT.Process(target=time.sleep, args=(600,), daemon=True)
    process.start()
    child.close()
    worker = isolated._Worker(process, parent, None)
    assert worker.handle.pidfd is not None and worker.alive()
    worker.kill()  # reaped: its pid is free for the system to hand out again
    assert not worker.alive() and process.exitcode == -signal.SIGKILL
    worker.interrupt()  # refused by the kernel for a reaped process, whatever now holds the number
    sent: list[int] = []
    until_done(lambda: sent.append(1), threading.Event(), alive=worker.alive)()  # never done: only its end stops it
    for stop in [t for t in threading.enumerate() if t.name == "saferoom-cancel"]:
        stop.join(10)
    assert sent == [] and not any(t.name == "saferoom-cancel" and t.is_alive() for t in threading.enumerate())
    parent.close()


def test_a_reaped_process_in_the_background_is_never_signalled_by_its_old_pid() -> None:
    """The background scheduler stops and continues long work by signals. A worker that died by itself may be
    reaped (multiprocessing reaps ended children when it starts another) while still registered; its pid is
    then free to name anything, so the scheduler signals through the pidfd the kernel refuses for it."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    handle = priority.Process(child.pid)
    child.wait()  # reaped: the number is free for the system to hand out again
    assert handle.pidfd is not None
    with pytest.raises(ProcessLookupError):
        signal.pidfd_send_signal(handle.pidfd, 0)
    background = priority.Background()
    background.add(handle)
    background.enter()  # pauses long work: a SIGSTOP through the pidfd, refused and ignored
    background.leave()
    background.discard(handle)
    assert handle not in background._processes


ENDLESS = "select range as n from range(1000000000000000)"  # rows for longer than any test


def test_a_long_query_writing_to_a_socket_yields_the_processor_and_a_stop_ends_its_stream_whole(engine: ProcessEngine) -> None:
    """The worker writes the result to the client's socket itself (the result door's way): demoted to long work, it
    is still stopped and continued around short queries; stopped, it is interrupted (not killed) and ends the
    stream with its end-of-stream marker, and what it reports is what the client read."""
    import socket
    import time

    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as the door's socket, which the gateway's event loop watches
    cancel = Cancel()
    result = Result(engine.stream(ENDLESS, cancel=cancel), max_rows=None)
    assert result.sendable
    read: dict[str, object] = {}

    def client() -> None:
        with theirs, theirs.makefile("rb") as source:
            read["head"] = source.readline()
            read["rows"] = sum(batch.num_rows for batch in pa.ipc.open_stream(source))
            read["rest"] = source.read()

    sent: list[object] = []
    threads = [threading.Thread(target=client), threading.Thread(target=lambda: sent.append(result.send_to(ours, b"head\n", 600)))]
    for thread in threads:
        thread.start()
    worker = busy_worker(engine)
    deadline = time.monotonic() + 600
    while worker.handle not in priority.BACKGROUND._processes:
        assert time.monotonic() < deadline, "the long query's process was never put in the background"
        time.sleep(0.05)
    assert engine.stream("select 4 as n").read_all().to_pylist() == [{"n": 4}]  # runs while the long one waits
    cancel("done")
    threads[1].join()
    ours.close()  # the gateway's copy: the worker closed its own, so the client now sees the end
    threads[0].join()
    (report,) = sent
    assert report.whole and isinstance(report.error, QueryCancelled)  # type: ignore[attr-defined]
    assert read["head"] == b"head\n" and read["rest"] == b"" and report.rows == read["rows"] > 0  # type: ignore[attr-defined]
    assert worker.handle not in priority.BACKGROUND._processes and worker not in engine._idle
