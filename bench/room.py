"""A room's cost, against baselines measured in the same run (the machine is shared and noisy).

* start-up: ``python -c pass`` in a room (``saferoom room --socket ... -- python -c pass``: the gateway asked
  whose token it is, the sandbox made, the limits set) against the same command run plainly;
* throughput: a query's whole result read inside a room through the gateway's Unix socket (its result door:
  Arrow with no HTTP around it, written by the query's worker process into memory files the client gave it
  over the socket; and, alternating with it, the HTTP route on the same socket, relayed by the gateway),
  against the same query in an embedded session, and against an Arrow Flight ``do_get`` of the same result
  (a Flight server in a process of its own, holding the result already made, over TCP on 127.0.0.1), as rows
  per second and their ratios. The socket runs the query each time and Flight only sends it, so a second
  Flight line runs the query in the Flight server for each ``do_get`` (an embedded session, its batches sent
  as DuckDB makes them): transport against transport, each with its engine's work. Those lines are timed one
  after the other, and the load of a shared machine drifts between them: the last lines read through the door
  (from this process, outside a room: the same socket and client) in pairs back to back with the made
  result's Flight, and with the door's stream (a client that does not give memory files), for at least
  ``PAIRED_SECONDS`` each, and give the median of the pairs' ratios. The processor time a result costs the
  gateway process and the client is measured too (the worker's is its own process's).

Usage: python bench/room.py [--rows 2000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pyarrow.flight as flight
from timing import paired_for, paired_medians

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import saferoom
from saferoom import cgroup, chunks, seccomp
from saferoom import room as rooms
from saferoom.client import RemoteSession
from saferoom.policy.limits import ROOM_DEFAULTS
from tests.gateway_helpers import SERVE, Server, free_port

QUERY = "select * from bench.t"
PAIRED_SECONDS = 3.0  # each paired line reads for at least this long: one unlucky pair moves its median little
ACCOUNT = "nobody"  # started as root, a room runs as an unprivileged account


def make_gateway(folder: Path, rows: int) -> Server:
    with duckdb.connect(str(folder / "bench.duckdb")) as con:
        con.execute(f"create table t as select range as id, random() as x, 'row ' || range as s from range({rows})")
    (folder / "saferoom.yaml").write_text(f"""version: 1
sources: {{bench: {{engine: duckdb, path: {folder / 'bench.duckdb'}}}}}
tables: {{bench.t: {{id: public, x: public, s: public}}}}
tags: {{}}
users: {{bench: {{roles: [analyst]}}}}
roles: {{analyst: {{max_rows: {rows * 2}}}}}
""")
    return Server(folder / "saferoom.yaml", folder / "state", free_port(), folder / "server.log",
                  socket=folder / "gateway.sock").start()


def workspace(folder: Path) -> Path:
    path = folder / "workspace"
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, pwd.getpwnam(ACCOUNT).pw_uid, -1)
    return path


def room_command(server: Server, space: Path, *command: str) -> list[str]:
    account = ["--account", ACCOUNT] if os.geteuid() == 0 else []
    return [sys.executable, "-c", SERVE, "room", "--socket", str(server.socket), "--workspace", str(space),
            *account, "--", *command]


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{command[:6]}... failed: {done.stderr[-2000:]}")
    return done.stdout


def startup(server: Server, space: Path, env: dict[str, str], repeat: int) -> None:
    """Wall time, and the processor time of every process started (the starter, bwrap, the command): on a busy
    machine the wall time is mostly waiting for a processor, and processor time says what the room costs."""
    used = {"plain": [], "room": []}

    def timed(name: str, command: list[str]) -> None:
        before = _children_seconds()
        run(command, env)
        used[name].append(_children_seconds() - before)

    plain, room, ratio = paired_medians(lambda: timed("plain", [sys.executable, "-c", "pass"]),
                                        lambda: timed("room", room_command(server, space, sys.executable, "-c", "pass")), repeat)
    print(f"start-up   python -c pass  plain {plain * 1000:7.0f} ms   in a room {room * 1000:7.0f} ms   "
          f"room adds {(room - plain) * 1000:5.0f} ms (x{1 / ratio:.1f})")
    plain_cpu, room_cpu = statistics.median(used["plain"]), statistics.median(used["room"])
    print(f"           processor time  plain {plain_cpu * 1000:7.0f} ms   in a room {room_cpu * 1000:7.0f} ms   "
          f"room adds {(room_cpu - plain_cpu) * 1000:5.0f} ms")


def _children_seconds() -> float:
    """User and system time of the child processes that have ended, their own children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def walls(repeat: int) -> None:
    """What the system-call filter and the room's cgroup add to a start, each timed on its own."""
    def compiled() -> None:
        os.close(seccomp.room_filter())

    def grouped() -> None:
        with cgroup.room_group(ROOM_DEFAULTS):
            pass

    for name, step in (("seccomp filter compiled", compiled), ("cgroup made and removed", grouped)):
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        print(f"           {name:24} {statistics.median(seconds) * 1000:6.1f} ms")
    print(f"           {cgroup.status()}")


def throughput(server: Server, space: Path, env: dict[str, str], rows: int, repeat: int) -> None:
    inside = textwrap.dedent(f"""
        import json, time, saferoom
        s = saferoom.connect()
        assert s._door  # the gateway's result door on its socket
        runs = {{"door": [], "http": []}}
        for _ in range({repeat}):
            for way in runs:  # alternating: the same load for both
                s._door = way == "door"  # the HTTP route on the same socket, as a gateway without the door
                start = time.perf_counter()
                n = s.query({QUERY!r}).to_arrow().num_rows
                runs[way].append(time.perf_counter() - start)
        print(json.dumps({{"rows": n, "runs": runs}}))
    """)
    found = json.loads(run(room_command(server, space, sys.executable, "-c", inside), env).strip().splitlines()[-1])
    assert found["rows"] == rows, found
    socket_seconds, http_seconds = statistics.median(found["runs"]["door"]), statistics.median(found["runs"]["http"])
    with saferoom.connect(server.policy, user="bench") as session:
        embedded = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.query(QUERY).to_arrow()
            embedded.append(time.perf_counter() - start)
    embedded_seconds = statistics.median(embedded)
    made, querying = flight_get(server.policy, rows, repeat)
    print(f"throughput {rows:,} rows  embedded {rows / embedded_seconds / 1e6:6.2f} M rows/s   "
          f"room's socket {rows / socket_seconds / 1e6:6.2f} M rows/s   ratio {embedded_seconds / socket_seconds:.2f}")
    print(f"           Arrow Flight do_get of the made result {rows / made / 1e6:6.2f} M rows/s   "
          f"room's socket / Flight {made / socket_seconds:.2f} (target >= 1)")
    print(f"           Arrow Flight do_get running the query  {rows / querying / 1e6:6.2f} M rows/s   "
          f"room's socket / Flight {querying / socket_seconds:.2f}")
    print(f"           the socket's HTTP route (no door)       {rows / http_seconds / 1e6:6.2f} M rows/s   "
          f"door / HTTP {http_seconds / socket_seconds:.2f}")


def processor_cost(server: Server, rows: int, repeat: int) -> None:
    """Processor time a result costs the gateway process (its threads; the query's worker is a process of its
    own) and the reading client, through the door and through the HTTP route of the same socket, alternating.
    Read from this process, outside a room (the gateway's /proc is not visible inside one): on a busy host the
    wall time mostly says how long each waited for a processor, the processor time what the transport costs."""
    assert server.socket is not None and server.process is not None
    session = RemoteSession(None, server.token("bench"), socket=server.socket)
    used: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for _ in range(repeat):
            for door in (True, False):
                session._door = door  # the HTTP route on the same socket, as a gateway without the door
                gateway, client = _process_seconds(server.process.pid), time.process_time()
                assert session.query(QUERY).to_arrow().num_rows == rows
                used[door].append((_process_seconds(server.process.pid) - gateway, time.process_time() - client))
    finally:
        session.close()
    (door_gw, door_client), (http_gw, http_client) = ((statistics.median(g for g, _ in used[way]),
                                                       statistics.median(c for _, c in used[way])) for way in (True, False))
    print(f"           processor time a result   gateway: door {door_gw * 1000:5.0f} ms, HTTP {http_gw * 1000:5.0f} ms "
          f"(door / HTTP {door_gw / http_gw:.2f});   client: door {door_client * 1000:5.0f} ms, HTTP {http_client * 1000:5.0f} ms")


def _process_seconds(pid: int) -> float:
    """User and system time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flight_get(policy: Path, rows: int, repeat: int) -> tuple[float, float]:
    """Median seconds of a Flight ``do_get`` of the query's result made beforehand, and of one that runs the query,
    served by a process of its own."""
    with flight_server(policy) as client:
        made, querying, _ = paired_medians(lambda: _get(client, b"result", rows), lambda: _get(client, b"query", rows), repeat)
    return made, querying


def door_and_flight(server: Server, rows: int, repeat: int) -> None:
    """The door (read from this process, outside a room: the same socket and client) and the made result's Flight
    ``do_get``, in pairs back to back: the ratio of each pair's two reads under the same load, where the lines
    above time the room, the embedded session and Flight one after the other (the load drifts between them).
    Then the door's two ways, memory files and the stream, paired the same way."""
    assert server.socket is not None
    session = RemoteSession(None, server.token("bench"), socket=server.socket)
    used: dict[str, list[float]] = {"door": [], "flight": []}

    def timed(name: str, read: Callable[[], None]) -> None:
        start = time.process_time()
        read()
        used[name].append(time.process_time() - start)

    try:
        with flight_server(server.policy) as client:
            pairs = paired_for(lambda: timed("door", lambda: _door(session, rows)),
                               lambda: timed("flight", lambda: _get(client, b"result", rows)), PAIRED_SECONDS, repeat)
        streamed = paired_for(lambda: _door(session, rows), lambda: _streamed(session, rows), PAIRED_SECONDS, repeat)
    finally:
        session.close()
    door, made, ratio = _medians(pairs)
    print(f"           door and Flight's made result, paired   door {rows / door / 1e6:6.2f} M rows/s   "
          f"Flight {rows / made / 1e6:6.2f} M rows/s   door / Flight {1 / ratio:.2f} (median of {len(pairs)} pairs)")
    print(f"           processor time of the reading client      door {statistics.median(used['door']) * 1000:5.0f} ms, "
          f"Flight {statistics.median(used['flight']) * 1000:5.0f} ms")
    memory, stream, ratio = _medians(streamed)
    print(f"           the door's memory files and its stream    memory {rows / memory / 1e6:6.2f} M rows/s   "
          f"stream {rows / stream / 1e6:6.2f} M rows/s   memory / stream {1 / ratio:.2f} (median of {len(streamed)} pairs)")


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(a / b for a, b in pairs))


def _streamed(session: RemoteSession, rows: int) -> None:
    """The door read as a client that gives no memory files reads it: the worker writes the stream."""
    with _no_memory_files():
        _door(session, rows)


@contextlib.contextmanager
def _no_memory_files() -> Iterator[None]:
    available, chunks.available = chunks.available, lambda: False
    try:
        yield
    finally:
        chunks.available = available


def _door(session: RemoteSession, rows: int) -> None:
    assert session.query(QUERY).to_arrow().num_rows == rows


def _get(client: flight.FlightClient, ticket: bytes, rows: int) -> None:
    assert client.do_get(flight.Ticket(ticket)).read_all().num_rows == rows


@contextlib.contextmanager
def flight_server(policy: Path) -> Iterator[flight.FlightClient]:
    """A client of a Flight server in a process of its own, which holds the query's result made already."""
    context = multiprocessing.get_context("spawn")
    port, ready = free_port(), context.Event()
    process = context.Process(target=_serve_flight, args=(str(policy), port, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(120):
            raise SystemExit("the Flight server did not start")
        yield flight.connect(f"grpc://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.join()


def _serve_flight(policy: str, port: int, ready: object) -> None:
    session = saferoom.connect(Path(policy), user="bench")
    table = session.query(QUERY).to_arrow()

    class Serve(flight.FlightServerBase):  # type: ignore[misc]
        def do_get(self, context: object, ticket: flight.Ticket) -> flight.FlightDataStream:
            if ticket.ticket == b"result":
                return flight.RecordBatchStream(table)
            result = session.query(QUERY)
            return flight.GeneratorStream(result.schema, result.stream())

    server = Serve(f"grpc://127.0.0.1:{port}")
    ready.set()  # type: ignore[attr-defined]
    server.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rooms.possible()
    folder = Path(tempfile.mkdtemp(prefix="saferoom-bench-room-"))
    folder.chmod(0o755)
    server = make_gateway(folder, args.rows)
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}, "SAFEROOM_TOKEN": server.token("bench")}
        space = workspace(folder)
        startup(server, space, env, args.repeat)
        walls(args.repeat)
        throughput(server, space, env, args.rows, args.repeat)
        processor_cost(server, args.rows, args.repeat)
        door_and_flight(server, args.rows, args.repeat)
    finally:
        server.stop()
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
