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

from saferoom.errors import PolicyError, Problem
from saferoom.policy.model import PolicyModel
from saferoom.policy.problems import translate

Loc = tuple[str, ...]


def read_policy_file(path: str | Path) -> tuple[PolicyModel, LineMap, bytes]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file: {exc.strerror}", file=str(path)) from None
    return read_policy_bytes(raw, path)


def read_policy_bytes(raw: bytes, path: Path) -> tuple[PolicyModel, LineMap, bytes]:
    """A policy's text as if read from ``path``: included fragments are found beside it."""
    lines = LineMap(str(path))
    data = _parse_yaml(raw, lines)
    if isinstance(data, dict) and data.get("includes"):
        data, raw = _merge_includes(data, path, lines, raw)
    return _validate(data, lines), lines, raw


def _parse_yaml(raw: bytes, lines: LineMap) -> Any:
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise PolicyError("the policy file is not UTF-8 text", file=lines.file) from None
    except RecursionError:
        raise PolicyError("the policy is nested too deeply", file=lines.file) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, lines.file) from None
    if node is None:
        raise PolicyError("the policy file is empty; start from `saferoom demo` or docs/policy.md", file=lines.file)
    _bounded(node, lines.file)
    lines.index(node, ())
    if lines.duplicates:
        raise PolicyError.of(lines.duplicates, file=lines.file)
    return yaml.safe_load(raw)


def _yaml_error(exc: yaml.YAMLError, file: str) -> PolicyError:
    """PyYAML's parser states (``<block end>``, ``<block mapping start>``) as what the writer did wrong."""
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context_mark", None)
    problem = str(getattr(exc, "problem", None) or exc)
    line = mark.line + 1 if mark else None
    column = mark.column + 1 if mark else None
    opened = context.line + 1 if context else line
    plain = _plain_yaml(problem, line, column, opened)
    where = f" (line {line}, column {column})" if line else ""
    return PolicyError(f"not valid YAML{where}: {plain}", file=file, line=line)


def _plain_yaml(problem: str, line: int | None, column: int | None, opened: int | None) -> str:
    if "<block end>" in problem or "<block mapping start>" in problem:
        return f"the indentation of line {line} does not match the lines before it; indent keys of one mapping alike"
    if "mapping values are not allowed" in problem:
        return (f"a `key:` cannot start at column {column} of line {line}; indent it under its parent, "
                "or quote a value that holds `: `")
    if "'\\t'" in problem:
        return f"line {line} is indented with a tab; YAML indents with spaces only"
    if "<stream end>" in problem:
        return "the file ends before a `[` or `{` is closed, or before a value it promised"
    if "expected ',' or" in problem:
        return f"a `[` or `{{` opened on line {opened} is not closed before line {line}"
    if "unexpected end of stream" in problem:
        return f"a quote opened on line {opened} is never closed"
    if "undefined alias" in problem:
        return f"{problem.replace('found undefined alias', 'the alias')} names no anchor (`&name`) written before it"
    if "could not find expected ':'" in problem:
        return f"line {line} has a key without a `:` after it"
    return problem


MAX_VALUES = 100_000  # a real policy holds thousands of values; aliases must not multiply it past this


def _bounded(node: yaml.Node, file: str) -> None:
    """Refuse a document that YAML aliases expand beyond ``MAX_VALUES`` (an alias bomb) or that refers to itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(current: yaml.Node) -> int:
        if id(current) in sizes:
            return sizes[id(current)]
        line = current.start_mark.line + 1
        if id(current) in open_:
            raise PolicyError("a YAML alias refers to the value that contains it", file=file, line=line)
        open_.add(id(current))
        total = 1 + sum(size(child) for _, child, _ in _children(current, ()))
        if total > MAX_VALUES:
            raise PolicyError(f"YAML aliases expand this to more than {MAX_VALUES:,} values; write it out, or split the "
                              "policy with `includes:`", file=file, line=line)
        open_.discard(id(current))
        sizes[id(current)] = total
        return total

    try:
        size(node)
    except RecursionError:
        raise PolicyError("the policy is nested too deeply", file=file) from None


MERGEABLE = ("sources", "threats", "tags", "tables")


def _merge_includes(data: dict[str, Any], path: Path, lines: LineMap, raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Merge each included fragment's sources, threats, tags and tables; a name defined twice is an error."""
    includes = data["includes"]
    line = lines.line(("includes",))
    if not isinstance(includes, list):
        raise PolicyError("`includes` is a list of fragment files", file=lines.file, line=line)
    for item in includes:
        fragment_path = path.parent / str(item)
        fragment, fragment_raw = _read_fragment(fragment_path, lines.file, line)
        raw += b"\0" + fragment_raw  # the policy hash covers what was included
        for section in MERGEABLE:
            merged = dict(data.get(section) or {})
            for key, value in (fragment.get(section) or {}).items():
                if key in merged:
                    raise PolicyError(f"{section}.{key} is defined both here and in {item}", file=lines.file, line=line)
                merged[key] = value
            data[section] = merged
    return data, raw


def _read_fragment(path: Path, file: str, line: int | None) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
        if node is not None:
            _bounded(node, str(path))
        fragment = yaml.safe_load(raw)
    except OSError as exc:
        raise PolicyError(f"cannot read included fragment {path.name}: {exc.strerror}", file=file, line=line) from None
    except (yaml.YAMLError, RecursionError):
        raise PolicyError(f"included fragment {path.name} is not valid YAML", file=file, line=line) from None
    extra = set(fragment or {}) - set(MERGEABLE) if isinstance(fragment, dict) else {"(not a mapping)"}
    if extra:
        raise PolicyError(f"fragment {path.name} may only hold {', '.join(MERGEABLE)}; found {', '.join(sorted(extra))}", file=file, line=line)
    return fragment or {}, raw


def _validate(data: Any, lines: LineMap) -> PolicyModel:
    if not isinstance(data, dict):
        raise PolicyError("the policy must be a mapping with `version: 1` at the top", file=lines.file, line=1)
    try:
        return PolicyModel.model_validate(data)
    except ValidationError as exc:
        raise _explain_validation(exc, lines) from None


def _explain_validation(exc: ValidationError, lines: LineMap) -> PolicyError:
    return PolicyError.of(translate(exc.errors(), lines.line), file=lines.file)


class LineMap:
    """Where each key of the YAML document was written, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._lines: dict[Loc, int] = {}
        self._keys: dict[Loc, int] = {}
        self.duplicates: list[Problem] = []

    def index(self, node: yaml.Node, loc: Loc) -> None:
        self._lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self._keys.update({(*loc, str(k.value)): k.start_mark.line + 1 for k, _ in node.value})
        for key, child, child_loc in _children(node, loc):
            if child_loc in self._lines and key is not None:
                where = ".".join(loc) or "the top level"
                message = f"duplicate key `{key}` in {where}; each key may appear once"
                self.duplicates.append(Problem(child.start_mark.line + 1, ".".join(child_loc), message))
                continue  # a YAML loader would silently keep the last one; here it is an error, named at its line
            self.index(child, child_loc)

    def exact(self, loc: Loc) -> int | None:
        """The line this very key is written on (a block mapping's value starts a line below it); None when the
        file does not write it (an included fragment may)."""
        return self._keys.get(loc)

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
