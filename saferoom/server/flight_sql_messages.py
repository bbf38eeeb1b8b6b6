"""The Flight SQL protocol messages the gateway reads and writes, built from their declarations at import.

Field names and numbers are those of Apache Arrow's ``format/FlightSql.proto`` (package
``arrow.flight.protocol.sql``, Apache-2.0). Only the read-only commands the endpoint answers are declared: a
command it does not know cannot be parsed, so it is refused by name before any of its bytes are read. Fields the
proto declares ``optional`` are declared with presence (proto2 labels): the wire format is the same.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from saferoom.errors import UsageError

PACKAGE = "arrow.flight.protocol.sql"
TYPE_PREFIX = "type.googleapis.com/"

_F = descriptor_pb2.FieldDescriptorProto
# message name -> (field name, number, type, repeated)
_MESSAGES: dict[str, tuple[tuple[str, int, int, bool], ...]] = {
    "CommandStatementQuery": (("query", 1, _F.TYPE_STRING, False), ("transaction_id", 2, _F.TYPE_BYTES, False)),
    "TicketStatementQuery": (("statement_handle", 1, _F.TYPE_BYTES, False),),
    "CommandGetSqlInfo": (("info", 1, _F.TYPE_UINT32, True),),
    "CommandGetCatalogs": (),
    "CommandGetDbSchemas": (("catalog", 1, _F.TYPE_STRING, False), ("db_schema_filter_pattern", 2, _F.TYPE_STRING, False)),
    "CommandGetTables": (("catalog", 1, _F.TYPE_STRING, False), ("db_schema_filter_pattern", 2, _F.TYPE_STRING, False),
                         ("table_name_filter_pattern", 3, _F.TYPE_STRING, False),
                         ("table_types", 4, _F.TYPE_STRING, True), ("include_schema", 5, _F.TYPE_BOOL, False)),
    "CommandGetTableTypes": (),
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="saferoom_flight_sql.proto", package=PACKAGE, syntax="proto2")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            declared = message.field.add(name=field, number=number, type=kind,
                                         label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if repeated and kind == _F.TYPE_UINT32:
                declared.options.packed = True  # proto3 packs repeated numbers; a reader takes either form
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
MESSAGES: dict[str, type[Any]] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _MESSAGES
}


def command_name(payload: bytes) -> tuple[str, bytes]:
    """The command's message name (``CommandGetTables``) and its bytes, from a descriptor's ``google.protobuf.Any``."""
    wrapper = _parsed(any_pb2.Any(), payload)
    prefix = f"{TYPE_PREFIX}{PACKAGE}."
    name = wrapper.type_url[len(prefix):] if wrapper.type_url.startswith(prefix) else ""
    return name, wrapper.value


def parse(name: str, payload: bytes) -> Any:
    return _parsed(MESSAGES[name](), payload)


def _parsed(message: Any, payload: bytes) -> Any:
    try:
        message.ParseFromString(payload)
    except DecodeError:
        raise UsageError("not a Flight SQL message: send commands as the Flight SQL protocol defines them") from None
    return message


def wrap(name: str, **fields: Any) -> bytes:
    """``name``'s message with ``fields``, packed in a ``google.protobuf.Any`` as Flight SQL sends its messages."""
    return any_of(name, MESSAGES[name](**fields).SerializeToString())


def any_of(name: str, payload: bytes) -> bytes:
    """``payload`` as the Flight SQL message ``name``, in a ``google.protobuf.Any``."""
    return bytes(any_pb2.Any(type_url=f"{TYPE_PREFIX}{PACKAGE}.{name}", value=payload).SerializeToString())
