"""A policy's mistakes in its own words.

pydantic reports where validation failed in its own terms: a union member it
tried (``str-enum[Action]``, ``ActionSpec``, a source's ``engine`` value) is part
of the location, and a value that fits no member of a union is reported once
per member. Here each error is walked along the policy's model, so the key path
is the one the file writes, what was expected is listed from the model itself,
and only the member the value was evidently meant for is blamed.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from saferoom.errors import Problem, closest
from saferoom.policy.model import SIZE, PolicyModel

Loc = tuple[str, ...]
Lines = Callable[[Loc], int | None]  # a key path to the line it is written on
SECRET_KEYS = ("secrets", "password")  # a value under these is never echoed, even when it is the wrong type


def did_you_mean(name: object, choices: Iterable[object]) -> str:
    close = closest(name, choices)
    return f"; did you mean `{close}`?" if close else ""


LISTED = 12  # a policy can list thousands of tables; the closest name matters more than the rest


def listed(choices: Iterable[object]) -> str:
    names = [f"`{c}`" for c in choices]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more if names else "(none yet)"


def expected(name: object, choices: Sequence[object]) -> str:
    """The allowed names, then the closest one when ``name`` looks like a misspelling of it."""
    return f"expected one of: {listed(choices)}{did_you_mean(name, choices)}"


@dataclass(frozen=True)
class Located:
    """Where an error is, as the file writes it, and the type the model expects there."""

    key: Loc
    kind: Any
    fork: Loc | None  # the key of the union whose member pydantic tried, if one was
    member: str = ""  # that member, as pydantic names it


def locate(raw: Sequence[int | str]) -> Located:
    kind: Any = PolicyModel
    key: list[str] = []
    fork: Loc | None = None
    member = ""
    for part in map(str, raw):
        members = _members(kind)
        if members is not None:  # pydantic names the member of the union it tried; the file does not
            fork, member = (fork, member) if fork is not None else (tuple(key), part)
            kind = next((m for m in members if _is_named(m, part)), None)
            continue
        key.append(part)
        kind = _child(kind, part)
    return Located(tuple(key), kind, fork, member)


def _unwrap(kind: Any) -> Any:
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) in (Union, types.UnionType):
        present = [m for m in get_args(kind) if m is not type(None)]
        return present[0] if len(present) == 1 else Union[tuple(present)]  # noqa: UP007 - built from a tuple
    return kind


def _members(kind: Any) -> list[Any] | None:
    kind = _unwrap(kind)
    return [_unwrap(m) for m in get_args(kind)] if get_origin(kind) in (Union, types.UnionType) else None


def _is_named(member: Any, part: str) -> bool:
    name = getattr(member, "__name__", "")
    return part in (name, str(member)) or part.endswith((f"[{name}]", f", {name}]")) or part in _discriminators(member)


def _discriminators(member: Any) -> tuple[str, ...]:
    field = member.model_fields.get("engine") if isinstance(member, type) and issubclass(member, BaseModel) else None
    return tuple(map(str, get_args(field.annotation))) if field else ()


def _child(kind: Any, part: str) -> Any:
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(part)
        return field.annotation if field else None
    if get_origin(kind) is dict:
        return get_args(kind)[1]
    if get_origin(kind) is list:
        return get_args(kind)[0]
    return None


# A value of the wrong shape for a union's member: that member was evidently not the one meant.
MISMATCH = {"model_type", "dict_type", "list_type", "string_type", "int_type", "float_type", "bool_type",
            "int_parsing", "float_parsing", "bool_parsing"}
SHAPES = {"model_type": "a mapping (key: value)", "dict_type": "a mapping (key: value)", "list_type": "a list",
          "string_type": "text", "int_type": "a whole number", "int_parsing": "a whole number", "float_type": "a number",
          "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false"}


def _mismatch(err: ErrorDetails) -> bool:
    return err["type"] in MISMATCH or (err["type"] in ("enum", "literal_error") and isinstance(err["input"], (dict, list)))


def translate(errors: Sequence[ErrorDetails], line: Lines) -> list[Problem]:
    """Every validation error as a problem; ``line`` maps a key path to its line."""
    forks: dict[Loc, list[tuple[ErrorDetails, Located]]] = {}
    problems: list[Problem] = []
    for err in errors:
        where = locate(err["loc"])
        if where.fork is None:
            problems.append(_problem(err, where, line))
        else:
            forks.setdefault(where.fork, []).append((err, where))
    for tried in forks.values():
        problems += _union_problems(tried, line)
    return problems


def _union_problems(tried: list[tuple[ErrorDetails, Located]], line: Lines) -> list[Problem]:
    """Blame the member the value fits the shape of; when it fits none, say every shape that would do."""
    if len({where.member for _, where in tried}) == 1:  # one member tried (a discriminated union): all its errors stand
        return [_problem(err, where, line) for err, where in tried]
    meant = [(err, where) for err, where in tried if not _mismatch(err)]
    if meant:
        return [_problem(err, where, line) for err, where in meant]
    choices = [(err, where) for err, where in tried if err["type"] in ("enum", "literal_error")]
    if choices:
        return [_problem(*choices[0], line)]
    err, where = tried[0]
    shapes = " or ".join(dict.fromkeys(SHAPES.get(e["type"], e["type"]) for e, _ in tried))
    return [Problem(line(where.key), _dotted(where.key), f"{_name(where.key)}: expected {shapes}, found {_shown(err, where)}")]


def _problem(err: ErrorDetails, where: Located, line: Lines) -> Problem:
    message = _message(err, where)
    key = where.key + (_discriminator(err),) if err["type"] == "union_tag_invalid" else where.key
    return Problem(line(key), _dotted(key), message)


def _message(err: ErrorDetails, where: Located) -> str:
    kind, name = err["type"], _name(where.key)
    if kind == "extra_forbidden":
        return f"unknown key `{where.key[-1]}` in {_name(where.key[:-1])}; {expected(where.key[-1], _keys(err))}"
    if kind == "missing":
        return f"missing required key `{_dotted(where.key)}`"
    if kind == "union_tag_not_found":
        return f"missing required key `{_dotted((*where.key, _discriminator(err)))}`; {expected('', _tags(where.kind))}"
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag", "")
        return f"{_name((*where.key, _discriminator(err)))}: `{tag}` is not known; {expected(tag, _tags(where.kind))}"
    if kind in ("enum", "literal_error"):
        return f"{name}: `{err['input']}` is not allowed; {expected(err['input'], _values(where.kind, err))}"
    if kind in SHAPES:
        return f"{name}: expected {SHAPES[kind]}, found {_shown(err, where)}"
    if kind == "value_error":
        return f"{name}: {err['msg'].removeprefix('Value error, ')}"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == SIZE:
        return f"{name} is {_shown(err, where)}; it should be a size such as 512MB or 2GB"
    return f"{name} is {_shown(err, where)}; {err['msg'].replace('Input should', 'it should', 1)}"


def _keys(err: ErrorDetails) -> list[str]:
    parent = locate(err["loc"][:-1]).kind
    parent = _unwrap(parent)
    return list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []


def _tags(kind: Any) -> list[str]:
    return [tag for member in _members(kind) or [] for tag in _discriminators(member)]


def _values(kind: Any, err: ErrorDetails) -> list[str]:
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [str(m.value) for m in kind]
    if get_origin(kind) is Literal:
        return [str(v) for v in get_args(kind)]
    return [v.strip(" '") for v in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ", ").split(",") if v.strip()]


def _discriminator(err: ErrorDetails) -> str:
    return str(err.get("ctx", {}).get("discriminator", "engine")).strip("'")


def _shown(err: ErrorDetails, where: Located) -> str:
    if any(k in SECRET_KEYS for k in where.key):
        return "a value that is not shown here"
    value = err["input"]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"`{value}`"


def _dotted(key: Loc) -> str:
    return ".".join(key)


def _name(key: Loc) -> str:
    return _dotted(key) or "the top level"
