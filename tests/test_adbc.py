"""pandas.read_sql through ADBC: the gateway's Flight SQL endpoint and the maintained ADBC Flight SQL driver,
against a real gateway process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import adbc_driver_manager
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import saferoom
import saferoom.adbc
from saferoom.audit import read
from saferoom.identity import Identity
from saferoom.server import flight_sql_messages as messages
from saferoom.server.flight_sql import Tickets
from saferoom.server.gateway import Gateway
from tests.gateway_helpers import SERVE, Server, eventually, free_port, gateway_policy, self_signed

SQL = "select order_id, customer_id, amount, region, created_at from orders order by order_id"
SINGLE = """  single:
    columns: {pii: tokenize, key: tokenize}
    max_concurrent: 1
"""
MANY_ROWS = "select a.order_id, b.region from orders a, orders b"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("adbc")
    policy = gateway_policy(room, folder)
    text = policy.read_text().replace("roles:\n", "roles:\n" + SINGLE, 1)
    policy.write_text(text.replace("users:\n", "users:\n  una: {roles: [single, investigator]}\n", 1))
    running = Server(policy, folder / "state", free_port(), folder / "server.log",
                     extra=["--flight-sql", str(free_port())]).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def alice_token(server: Server) -> str:
    return server.token("alice")


@pytest.fixture(scope="module")
def adbc(server: Server, alice_token: str) -> Iterator[object]:
    connection = saferoom.adbc.connect(server.url, alice_token)
    yield connection
    connection.close()


def endpoint(server: Server, token: str) -> str:
    return saferoom.adbc.flight_sql_uri(server.url, token)


def raw_client(server: Server, token: str) -> tuple[flight.FlightClient, flight.FlightCallOptions]:
    client = flight.FlightClient(endpoint(server, token))
    return client, flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def test_read_sql_returns_the_users_rows_with_their_types(adbc, server: Server, alice_token: str) -> None:
    frame = pd.read_sql(SQL, adbc)
    with saferoom.connect(url=server.url, token=alice_token) as remote:
        expected = remote.query(SQL).to_pandas()
    assert len(frame) == len(expected) > 0
    pd.testing.assert_frame_equal(frame, expected)
    assert str(frame["created_at"].dtype).startswith("datetime64") and frame["order_id"].dtype == "int64"


def test_a_refused_column_raises_with_the_explanation(adbc, server: Server) -> None:
    with pytest.raises(pd.errors.DatabaseError) as caught:
        pd.read_sql("select pan from cards", adbc)
    assert isinstance(caught.value.__cause__, adbc_driver_manager.ProgrammingError)
    assert "card-theft" in str(caught.value) and "prod.cards.pan" in str(caught.value)
    records = [r for r in read(server.state) if r.get("query") == "select pan from cards"]
    assert records and records[-1]["decision"] == "refused" and records[-1]["user"] == "alice"


def test_the_audit_log_has_the_query_and_how_it_ended(adbc, server: Server) -> None:
    sql = "select region, count(*) as n from orders group by region order by region"
    rows = len(pd.read_sql(sql, adbc))
    decisions = [r for r in read(server.state) if r.get("query") == sql and r["event"] == "decision"]
    assert [d["user"] for d in decisions] == ["alice"] and decisions[0]["decision"] == "allowed"
    request = decisions[0]["request_id"]
    eventually(lambda: any(r.get("request_id") == request and r["event"] == "result" for r in read(server.state)),
               "the result record")
    ended = [r for r in read(server.state) if r.get("request_id") == request and r["event"] == "result"]
    assert (ended[0]["status"], ended[0]["rows"]) == ("completed", rows)


@pytest.mark.parametrize("header", ["Bearer sr_nope_nope", "Bearer ", "Basic Zm9vOmJhcg==", None])
def test_a_bad_token_is_refused(server: Server, alice_token: str, header: str | None) -> None:
    client = flight.FlightClient(endpoint(server, alice_token))
    options = flight.FlightCallOptions(headers=[(b"authorization", header.encode())] if header else [])
    descriptor = flight.FlightDescriptor.for_command(messages.wrap("CommandStatementQuery", query="select 1"))
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(descriptor, options)


def test_a_revoked_token_is_refused_on_its_next_call(server: Server) -> None:
    import subprocess
    import sys

    token = server.token("alice")
    connection = saferoom.adbc.connect(server.url, token)
    try:
        assert pd.read_sql("select 1 as x", connection)["x"].tolist() == [1]
        subprocess.run([sys.executable, "-c", SERVE, "token", "revoke", token.split("_")[1], "--state", str(server.state)],
                       check=True, capture_output=True)

        def refused() -> bool:
            try:
                pd.read_sql("select 1 as x", connection)
            except pd.errors.DatabaseError as exc:
                return "revoked" in str(exc)
            return False

        eventually(refused, "the revoked token refused")
    finally:
        connection.close()


def test_a_huge_query_text_is_refused_and_recorded(adbc, server: Server) -> None:
    sql = "select 1 as x where 'a' = '" + "a" * (2 << 20) + "'"
    with pytest.raises(pd.errors.DatabaseError) as caught:
        pd.read_sql(sql, adbc)
    assert "bytes; the gateway accepts at most 262,144" in str(caught.value.__cause__)
    refused = [r for r in read(server.state) if r.get("user") == "alice" and r.get("decision") == "refused"]
    assert refused[-1]["refusal"]["type"] == "TooLarge" and len(json.dumps(refused[-1])) < 64 * 1024  # a prefix, not 2 MB


@pytest.mark.parametrize("command", ["CommandStatementUpdate", "CommandPreparedStatementQuery", "ActionBeginTransactionRequest", ""])
def test_unknown_commands_are_refused_by_name(server: Server, alice_token: str, command: str) -> None:
    client, options = raw_client(server, alice_token)
    wrapped = messages.any_of(command, b"\x0a\x08drop all")
    with pytest.raises(flight.FlightError, match="not served"):
        client.get_flight_info(flight.FlightDescriptor.for_command(wrapped), options)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", messages.any_of("CommandStatementQuery", b"\x0a\x7f")])
def test_malformed_messages_are_refused_without_a_traceback(server: Server, alice_token: str, payload: bytes) -> None:
    client, options = raw_client(server, alice_token)
    with pytest.raises(flight.FlightServerError, match="not a Flight SQL message") as caught:
        client.get_flight_info(flight.FlightDescriptor.for_command(payload), options)
    assert "Traceback" not in str(caught.value)
    with pytest.raises(flight.FlightServerError, match="not a Flight SQL message|not a ticket this gateway gave out"):
        client.do_get(flight.Ticket(payload), options).read_all()


def test_actions_uploads_and_paths_are_refused(server: Server, alice_token: str) -> None:
    client, options = raw_client(server, alice_token)
    with pytest.raises(pa.ArrowNotImplementedError, match="not served"):  # unimplemented: the driver goes on unprepared
        list(client.do_action(flight.Action("CreatePreparedStatement", b""), options))
    with pytest.raises(flight.FlightError, match="not a path"):
        client.get_flight_info(flight.FlightDescriptor.for_path("prod", "cards"), options)
    writer, _ = client.do_put(flight.FlightDescriptor.for_command(b""), pa.schema([("x", pa.int64())]), options)
    with pytest.raises(flight.FlightError, match="read-only"):
        writer.close()


def test_a_ticket_of_another_users_query_is_refused(server: Server, alice_token: str) -> None:
    client, alice = raw_client(server, alice_token)
    descriptor = flight.FlightDescriptor.for_command(messages.wrap("CommandStatementQuery", query=SQL))
    ticket = client.get_flight_info(descriptor, alice).endpoints[0].ticket
    _, ivan = raw_client(server, server.token("ivan"))
    with pytest.raises(flight.FlightError, match="no query of yours"):
        client.do_get(ticket, ivan).read_all()
    assert client.do_get(ticket, alice).read_all().num_rows > 0  # still alice's, once
    with pytest.raises(flight.FlightError, match="no query of yours"):
        client.do_get(ticket, alice).read_all()


def test_an_abandoned_do_get_frees_the_query_slot(server: Server) -> None:
    token = server.token("una")  # one query at a time
    client, una = raw_client(server, token)
    descriptor = flight.FlightDescriptor.for_command(messages.wrap("CommandStatementQuery", query=MANY_ROWS))
    info = client.get_flight_info(descriptor, una)
    reader = client.do_get(info.endpoints[0].ticket, una)
    assert reader.read_chunk().data.num_rows > 0
    reader.cancel()
    client.close()
    request = _last_decision(server, "una")
    eventually(lambda: any(r.get("request_id") == request and r["event"] == "result" for r in read(server.state)),
               "the abandoned query's result record")
    ended = next(r for r in read(server.state) if r.get("request_id") == request and r["event"] == "result")
    assert ended["status"] == "cancelled"
    connection = saferoom.adbc.connect(server.url, token)
    try:
        assert pd.read_sql("select 1 as x", connection)["x"].tolist() == [1]  # the slot came back
    finally:
        connection.close()


def _last_decision(server: Server, user: str) -> str:
    decisions = [r for r in read(server.state) if r.get("user") == user and r["event"] == "decision"]
    return str(decisions[-1]["request_id"])


def test_get_objects_lists_only_what_the_user_may_see(adbc) -> None:
    objects = adbc.adbc_get_objects(depth="all").read_all().to_pylist()
    schemas = {s["db_schema_name"]: s for catalog in objects for s in catalog["catalog_db_schemas"]}
    tables = {t["table_name"]: [c["column_name"] for c in t["table_columns"]] for t in schemas["prod"]["db_schema_tables"]}
    assert "orders" in tables and "order_id" in tables["orders"]
    assert "pan" not in tables.get("cards", [])  # alice may not read card numbers: not listed


def test_get_info_names_the_gateway(adbc) -> None:
    info = adbc.adbc_get_info()
    assert info["vendor_name"] == "saferoom" and info["vendor_version"] == saferoom.__version__


def test_errors_carry_the_structured_refusal(server: Server, alice_token: str) -> None:
    client, options = raw_client(server, alice_token)
    descriptor = flight.FlightDescriptor.for_command(messages.wrap("CommandStatementQuery", query="select pan from cards"))
    with pytest.raises(flight.FlightUnauthorizedError) as caught:
        client.get_flight_info(descriptor, options)
    detail = json.loads(caught.value.extra_info)["error"]
    assert (detail["type"], detail["column"]) == ("QueryRejected", "prod.cards.pan")


def test_get_table_schema_has_the_columns_as_the_role_receives_them(adbc) -> None:
    schema = adbc.adbc_get_table_schema("customers", db_schema_filter="prod")
    assert "name" in schema.names and schema.field("customer_id").type == pa.string()  # tokenized for analysts
    with pytest.raises(adbc_driver_manager.Error):
        adbc.adbc_get_table_schema("no_such_table", db_schema_filter="prod")


def test_a_role_is_chosen_per_connection(server: Server) -> None:
    token = server.token("una")
    sql = "select pan from cards order by card_id limit 1"
    default = saferoom.adbc.connect(server.url, token)
    investigating = saferoom.adbc.connect(server.url, token, role="investigator")
    try:
        with pytest.raises(pd.errors.DatabaseError, match="pan"):
            pd.read_sql(sql, default)
        assert pd.read_sql(sql, investigating)["pan"].str.contains(r"\*").all()  # masked for investigators
    finally:
        default.close()
        investigating.close()
    alice_token = server.token("alice")
    with pytest.raises(saferoom.AccessDenied, match="investigator"):
        saferoom.adbc.connect(server.url, alice_token, role="investigator")  # asked of the gateway first
    alice = saferoom.adbc.connect(endpoint(server, alice_token), alice_token, role="investigator")
    try:
        with pytest.raises(pd.errors.DatabaseError, match="does not hold role `investigator`"):
            pd.read_sql("select 1 as x", alice)  # and by the endpoint on every call
    finally:
        alice.close()


def test_tickets_never_fetched_are_cancelled_and_free_their_slot(room, tmp_path) -> None:
    text = gateway_policy(room, tmp_path).read_text().replace("roles:\n", "roles:\n" + SINGLE, 1)
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(text.replace("users:\n", "users:\n  una: {roles: [single]}\n", 1))
    gateway = Gateway(policy, tmp_path / "state")
    try:
        una = Identity("una", None, "token")
        session = gateway.session(una)
        tickets = Tickets(gateway, seconds=0)
        handle = tickets.add("una", gateway.start(session, MANY_ROWS, una))
        with pytest.raises(saferoom.LimitExceeded, match="max_concurrent"):
            gateway.start(session, "select 1 as x", una)  # her one slot is taken
        tickets.sweep()
        with pytest.raises(saferoom.NotFound):
            tickets.take(handle, "una")
        running = gateway.start(session, "select 1 as x", una)  # the slot came back
        gateway.finish(running, rows=0, size=0)
    finally:
        gateway.close()
    ended = [r for r in read(tmp_path / "state") if r["event"] == "result"]
    assert [r["status"] for r in ended] == ["cancelled", "completed"]


def test_tls_serves_verified_clients_only(room, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    running = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log",
                     extra=["--flight-sql", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        _start_tls(running, cert)
        token = running.token("alice")
        url = f"https://127.0.0.1:{running.port}"
        assert saferoom.adbc.flight_sql_uri(url, token, verify=str(cert)).startswith("grpc+tls://127.0.0.1:")
        with saferoom.adbc.connect(url, token, verify=str(cert)) as connection:
            assert pd.read_sql("select count(*) as n from prod.orders", connection)["n"].tolist()[0] > 0
        uri = saferoom.adbc.flight_sql_uri(url, token, verify=str(cert))
        with saferoom.adbc.connect(uri, token) as unverified:  # the system's CAs do not vouch for it
            with pytest.raises(pd.errors.DatabaseError):
                pd.read_sql("select 1 as x", unverified)
    finally:
        running.stop()


def _start_tls(server: Server, cert) -> None:
    """Server.start polls plain HTTP; a TLS gateway is polled over TLS."""
    import os
    import ssl
    import subprocess
    import sys

    from tests.gateway_helpers import answers

    server.process = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "-p", str(server.policy), "--state", str(server.state), "--port",
         str(server.port), *server.extra], stdout=server.log.open("ab"), stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"https://127.0.0.1:{server.port}"
    eventually(lambda: answers(url, verify=ssl.create_default_context(cafile=str(cert))) or server.process.poll() is not None,
               "the gateway to start")
    assert server.process.poll() is None, server.log.read_text()[-2000:]


@pytest.mark.parametrize("blocked, code, says", [
    ("adbc_driver_flightsql", "import saferoom.adbc; saferoom.adbc.connect('grpc://127.0.0.1:1', 'sr_x_y')",
     "saferoom.adbc needs the adbc extra"),
    ("google.protobuf", "from saferoom.server.run import _flight_sql_module; _flight_sql_module()",
     "--flight-sql needs the adbc extra"),
])
def test_a_missing_extra_says_which_to_install(blocked: str, code: str, says: str) -> None:
    import subprocess
    import sys

    script = (f"import sys; sys.modules[{blocked!r}] = None\n"
              "from saferoom.errors import UsageError\n"
              f"try:\n    {code}\nexcept UsageError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert says in done.stdout and "pip install 'saferoom[adbc]'" in done.stdout


def test_nothing_secret_in_the_log_or_the_audit_log(adbc, server: Server, alice_token: str) -> None:
    from tests.gateway_helpers import CANARY_DB_PASSWORD

    with pytest.raises(pd.errors.DatabaseError) as caught:
        pd.read_sql("select pan from cards", adbc)
    secret = alice_token.split("_")[-1]
    log = server.log.read_text()
    assert "Flight SQL (ADBC) at grpc+tcp://127.0.0.1:" in log  # the log is the gateway's, and is read
    for text in (str(caught.value), log, json.dumps(read(server.state))):
        assert secret not in text and CANARY_DB_PASSWORD not in text
