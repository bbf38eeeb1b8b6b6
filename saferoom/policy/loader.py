"""Read a policy file: YAML → typed models → cross-checked :class:`Policy`.

Every problem becomes a :class:`PolicyError` naming the file and the line, so a
security engineer can fix the file without reading a traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from saferoom.errors import PolicyError
from saferoom.policy.model import PolicyModel

Loc = tuple[str, ...]


def read_policy_file(path: str | Path) -> tuple[PolicyModel, LineMap, bytes]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file: {exc.strerror}", file=str(path)) from None
    lines = LineMap(str(path))
    data = _parse_yaml(raw, lines)
    return _validate(data, lines), lines, raw


def _parse_yaml(raw: bytes, lines: LineMap) -> Any:
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise PolicyError("the policy file is not UTF-8 text", file=lines.file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", file=lines.file, line=line) from None
    if node is None:
        raise PolicyError("the policy file is empty; start from `saferoom demo` or docs/policy.md", file=lines.file)
    lines.index(node, ())
    return yaml.safe_load(raw)


def _validate(data: Any, lines: LineMap) -> PolicyModel:
    if not isinstance(data, dict):
        raise PolicyError("the policy must be a mapping with `version: 1` at the top", file=lines.file, line=1)
    try:
        return PolicyModel.model_validate(data)
    except ValidationError as exc:
        raise _explain_validation(exc, lines) from None


def _explain_validation(exc: ValidationError, lines: LineMap) -> PolicyError:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"] if not str(p).startswith(("function-", "Action", "ActionSpec")))
    loc = tuple(p for p in loc if p not in ("duckdb", "str", "list[str]"))
    where = ".".join(loc) or "the top level"
    kind = err["type"]
    if kind == "extra_forbidden":
        message = f"unknown key `{loc[-1]}` in {'.'.join(loc[:-1]) or 'the top level'}; check its spelling in docs/policy.md"
    elif kind == "missing":
        message = f"missing required key `{where}`"
    else:
        message = f"{where}: {err['msg']}"
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return PolicyError(message, file=lines.file, line=lines.line(loc))


class LineMap:
    """Where each key of the YAML document was written, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._lines: dict[Loc, int] = {}

    def index(self, node: yaml.Node, loc: Loc) -> None:
        self._lines[loc] = node.start_mark.line + 1
        for key, child, child_loc in _children(node, loc):
            if child_loc in self._lines and key is not None:
                raise PolicyError(
                    f"duplicate key `{key}` in {'.'.join(loc) or 'the top level'}; each key may appear once",
                    file=self.file,
                    line=child.start_mark.line + 1,
                )
            self.index(child, child_loc)

    def line(self, loc: Loc) -> int | None:
        while loc:
            if loc in self._lines:
                return self._lines[loc]
            loc = loc[:-1]
        return self._lines.get(())


def _children(node: yaml.Node, loc: Loc) -> Iterator[tuple[str | None, yaml.Node, Loc]]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = str(key_node.value)
            yield key, value, (*loc, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            yield None, value, (*loc, str(i))


def policy_hash(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
