"""Policy as code: load a ``saferoom.yaml`` and answer "what does this role get?"."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlglot import exp

from saferoom import secrets
from saferoom.errors import AccessDenied, PolicyError, Problem
from saferoom.policy.aggregate import Aggregate, entity_key
from saferoom.policy.filter_reads import cycle, qualify_filter, read_tables, reads
from saferoom.policy.filters import parse_filter, raw_columns
from saferoom.policy.loader import LineMap, policy_hash, read_policy_bytes, read_policy_file
from saferoom.policy.model import PUBLIC, Action, ActionSpec, PolicyModel, PostgresSource, Role, User
from saferoom.policy.problems import expected

COUNTABLE = (Action.ALLOW, Action.TOKENIZE)  # actions under which distinct values of a key stay distinct

__all__ = ["Action", "ActionSpec", "ColumnRule", "Policy", "TableRef", "load_policy", "parse_policy"]


@dataclass(frozen=True)
class TableRef:
    """A table the policy lists: ``source.table`` or ``source.schema.table``."""

    key: str
    source: str
    schema: str | None
    name: str

    @classmethod
    def parse(cls, key: str) -> TableRef:
        parts = key.split(".")
        if len(parts) == 2 and all(parts):
            return cls(key, parts[0], None, parts[1])
        if len(parts) == 3 and all(parts):
            return cls(key, parts[0], parts[1], parts[2])
        raise ValueError(f"table `{key}` must be written source.table or source.schema.table")


@dataclass(frozen=True)
class ColumnRule:
    """What one role gets for one column, and why."""

    table: str
    column: str
    tags: tuple[str, ...]
    action: Action
    spec: ActionSpec
    tag: str | None
    threats: tuple[str, ...]

    @property
    def reason(self) -> str:
        if self.tag is None:
            return "untagged (public)"
        threats = ", ".join(self.threats) or "no threat named"
        return f"tag {self.tag} ({threats})"


class Policy:
    """A validated policy. Build it with :func:`load_policy`."""

    def __init__(self, model: PolicyModel, *, path: Path, lines: LineMap, digest: str) -> None:
        self.model = model
        self.path = path
        self.base = path.parent
        self.lines = lines
        self.hash = digest
        self.tables: dict[str, TableRef] = {}
        self._filters: dict[tuple[str, str], exp.Expr | None] = {}
        self._problems: list[Problem] = []
        self._check()

    @cached_property
    def token_key(self) -> secrets.Secret | None:
        ref = self.model.secrets.get("token_key")
        return secrets.resolve(ref, self.base) if ref else None

    def user(self, name: str) -> User:
        try:
            return self.model.users[name]
        except KeyError:
            raise AccessDenied(
                f"user `{name}` is not in the policy; ask the security team to add them under `users:` in {self.path.name}"
            ) from None

    def role_for(self, user: str, role: str | None) -> tuple[str, Role]:
        """The one role a session acts as: the named one, or the user's first."""
        roles = self.user(user).roles
        chosen = role or roles[0]
        if chosen not in roles:
            raise AccessDenied(f"user `{user}` does not hold role `{chosen}`; their roles are: {', '.join(roles)}")
        return chosen, self.model.roles[chosen]

    def columns(self, table: str) -> dict[str, tuple[str, ...]]:
        """The listed columns of a table (lower-cased name -> tags); unlisted columns do not exist."""
        spec = self.model.tables[table]
        return {name.lower(): _tags(tags) for name, tags in spec.items()}

    def rule(self, role: str, table: str, column: str) -> ColumnRule:
        tags = self.columns(table)[column]
        actions = self.model.roles[role].columns
        best: tuple[ActionSpec, str | None] = (ActionSpec(action=Action.ALLOW), None)
        for tag in tags:
            spec = _spec(actions.get(tag, Action.DENY))
            if best[1] is None or spec.action.strictness < best[0].action.strictness:
                best = (spec, tag)
        spec, strictest = best
        threats = tuple(self.model.tags[strictest].threats) if strictest else ()
        return ColumnRule(table, column, tags, spec.action, spec, strictest, threats)

    def roles_seeing(self, table: str, column: str) -> list[tuple[str, Action]]:
        """Roles a user holds that may see the column: a role no user holds (one only builds use) is not one to ask for."""
        held = {role for user in self.model.users.values() for role in user.roles}
        rules = ((role, self.rule(role, table, column).action) for role in self.model.roles if role in held)
        return [(role, action) for role, action in rules if action is not Action.DENY]

    def row_filter(self, role: str, table: str) -> exp.Expr | None:
        """A role's filter on a table, parsed; one that reads other tables has every column pinned to its table
        (see :mod:`saferoom.policy.filter_reads`). Worked out once; each call gets its own copy."""
        key = (role, table)
        if key not in self._filters:
            self._filters[key] = self._parsed_filter(role, table)
        found = self._filters[key]
        return found.copy() if found is not None else None

    def written_filter(self, role: str, table: str) -> exp.Expr | None:
        """A role's filter on a table as written (its subqueries' tables as the policy names them)."""
        text = self.model.roles[role].rows.get(table)
        return parse_filter(text, self.dialect(table)) if text else None

    def filter_reads(self, role: str, table: str) -> tuple[str, ...]:
        """The policy tables a role's filter on a table reads in its subqueries (none for most filters)."""
        predicate = self.row_filter(role, table)
        return read_tables(predicate) if predicate is not None else ()

    def _parsed_filter(self, role: str, table: str) -> exp.Expr | None:
        predicate = self.written_filter(role, table)
        if predicate is None or not reads(predicate):
            return predicate
        listed = {key: list(self.columns(key)) for key in self.tables}
        return qualify_filter(predicate, table, listed, self.dialect(table))

    def dialect(self, table: str) -> str:
        """The SQL dialect of a table's row filters: its source's."""
        return self.model.sources[self.tables[table].source].dialect

    def local_path(self, path: str) -> Path:
        """A path the policy names, relative to its own folder unless absolute (``~`` expanded)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.base / candidate

    def source_path(self, name: str) -> Path | None:
        """Where a source's files are (a database file, a folder of Parquet files); None for a server."""
        path = getattr(self.model.sources[name], "path", None)
        return self.local_path(path) if path is not None else None

    def threat(self, name: str) -> str:
        return self.model.threats.get(name, name)

    def _check(self) -> None:
        """Run every check and report all that fail together: one round of fixes, not one per mistake."""
        self._check_tags()
        self._check_tables()
        self._check_roles()
        self._check_builds()
        self._check_rooms()
        self._check_reviews()
        self._check_secrets()
        if self._problems:
            raise PolicyError.of(self._problems, file=str(self.path))

    def _fail(self, message: str, *loc: str) -> PolicyError:
        return PolicyError(message, file=str(self.path), line=self.lines.line(loc))

    def _note(self, message: str, *loc: str) -> None:
        self._problems.append(Problem(self.lines.line(loc), ".".join(loc), message))

    def _check_tags(self) -> None:
        for name, tag in self.model.tags.items():
            if name == PUBLIC:
                self._note("`public` is reserved for untagged columns; pick another tag name", "tags", name)
            for threat in tag.threats:
                if threat not in self.model.threats:
                    self._note(f"tag `{name}` names threat `{threat}`, which is not under `threats:`; "
                               f"{expected(threat, list(self.model.threats))}", "tags", name)

    def _check_tables(self) -> None:
        for key, columns in self.model.tables.items():
            try:
                ref = TableRef.parse(key)
            except ValueError as exc:
                self._note(str(exc), "tables", key)
                continue
            if ref.source not in self.model.sources:
                self._note(f"table `{key}` is in source `{ref.source}`, which is not under `sources:`; "
                           f"{expected(ref.source, list(self.model.sources))}", "tables", key)
                continue
            for column, tags in columns.items():
                for tag in _tags(tags):
                    if tag not in self.model.tags:
                        self._note(
                            f"column `{key}.{column}` has tag `{tag}`, which is not under `tags:` (use `public` for none); "
                            f"{expected(tag, [*self.model.tags, PUBLIC])}",
                            "tables", key, column,
                        )
            self.tables[key] = ref

    def _check_roles(self) -> None:
        for user, spec in self.model.users.items():
            for held in spec.roles:
                if held not in self.model.roles:
                    self._note(f"user `{user}` has role `{held}`, which is not under `roles:`; "
                               f"{expected(held, list(self.model.roles))}", "users", user)
        for name, role in self.model.roles.items():
            for tag in role.columns:
                if tag not in self.model.tags:
                    self._note(f"role `{name}` gives an action for tag `{tag}`, which is not under `tags:`; "
                               f"{expected(tag, list(self.model.tags))}", "roles", name, "columns", tag)
            for table in role.rows:
                self._check_filter(name, table)
            self._check_filter_cycles(name)
            if role.aggregate is not None:
                self._check_aggregate(name, role.aggregate)

    def _check_aggregate(self, role: str, rules: Aggregate) -> None:
        """The entity and every key name a listed table and column, which the role sees whole or as tokens
        (a count of distinct tokens is a count of distinct keys; a masked or generalized key is not)."""
        loc = ("roles", role, "aggregate")
        named = [rules.entity_table, *rules.keys, *(rules.tables or ())]
        for table in (t for t in named if t not in self.tables):
            self._note(f"`aggregate` names table `{table}`, which is not under `tables:`; "
                       f"{expected(table, list(self.tables))}", *loc)
        if rules.entity_table in self.tables and rules.entity_column not in self.columns(rules.entity_table):
            self._note(f"`aggregate.entity` names `{rules.entity}`, a column `{rules.entity_table}` does not list", *loc)
        for table in (t for t in self.tables if t in named or rules.covers(t)):
            key = entity_key(rules, table, self.columns(table))
            if key is not None and key not in self.columns(table):
                self._note(f"`aggregate.keys` gives `{key}` for `{table}`, which does not list it", *loc, "keys")
            elif key is not None and self.rule(role, table, key).action not in COUNTABLE:
                self._note(f"role `{role}` must see `{table}.{key}` (allow or tokenize) to count its entities", *loc)

    def _check_filter(self, role: str, table: str) -> None:
        loc = ("roles", role, "rows", table)
        if table in self.model.tables and table not in self.tables:
            return  # the table itself is wrong, and said so; its filter cannot be checked against it
        if table not in self.tables:
            self._note(f"role `{role}` filters table `{table}`, which is not under `tables:`; "
                       f"{expected(table, list(self.tables))}", *loc)
            return
        try:
            predicate = self.row_filter(role, table)
        except ValueError as exc:
            self._note(f"row filter for `{table}`: {exc}", *loc)
            return
        if predicate is not None and reads(predicate):
            self._check_filter_sources(table, read_tables(predicate), loc)
            return
        unknown = raw_columns(predicate) - set(self.columns(table)) if predicate else set()
        if unknown:
            self._note(f"row filter for `{table}` uses column(s) {', '.join(sorted(unknown))} that the table does not list", *loc)

    def _check_filter_sources(self, table: str, read: tuple[str, ...], loc: tuple[str, ...]) -> None:
        """A filter runs inside the one query that reads its table, so it reads only tables of the same source."""
        source = self.tables[table].source
        for other in (t for t in read if self.tables[t].source != source):
            self._note(f"row filter for `{table}` reads `{other}` of source `{self.tables[other].source}`; a filter may "
                       f"read only tables of its own table's source (`{source}`), which one query can reach", *loc)

    def _check_filter_cycles(self, role: str) -> None:
        """Filters that read each other's tables in a loop are refused: each would be defined by the other."""
        rows = self.model.roles[role].rows
        checked = [t for t in rows if t in self.tables and self._filter_ok(role, t)]
        loop = cycle({t: self.filter_reads(role, t) for t in checked})
        if loop:
            self._note(f"the row filters of role `{role}` read each other in a loop: {' → '.join(loop)}; "
                       "a filter may read a table whose own filter does not lead back to it", "roles", role, "rows")

    def _filter_ok(self, role: str, table: str) -> bool:
        try:
            self.row_filter(role, table)
        except ValueError:
            return False
        return True

    def _check_builds(self) -> None:
        for name, build in self.model.builds.items():
            loc = ("builds", name)
            if build.role not in self.model.roles:
                self._note(f"build `{name}` uses role `{build.role}`, which is not under `roles:`; "
                           f"{expected(build.role, list(self.model.roles))}", *loc, "role")
            for table in build.tables or []:
                if table not in self.model.tables:
                    self._note(f"build `{name}` lists table `{table}`, which is not under `tables:`; "
                               f"{expected(table, list(self.model.tables))}", *loc, "tables")
            if build.k_anonymity:
                listed = {c for t in self.tables for c in self.columns(t)}
                missing = [c for c in build.k_anonymity.columns if c.lower() not in listed]
                if missing:
                    self._note(f"k_anonymity column(s) {', '.join(missing)} are in no listed table", *loc, "k_anonymity")

    def _check_rooms(self) -> None:
        for name in self.model.rooms:
            if name != "default" and name not in self.model.roles:
                self._note(f"`rooms:` names `{name}`, which is neither `default` nor a role under `roles:`; "
                           f"{expected(name, ['default', *self.model.roles])}", "rooms", name)

    def _check_reviews(self) -> None:
        for kind, rule in self.model.reviews:
            for role in rule.roles if rule else []:
                if role not in self.model.roles:
                    self._note(f"`reviews.{kind}` names role `{role}`, which is not under `roles:`; "
                               f"{expected(role, list(self.model.roles))}", "reviews", kind, "roles")

    def source_url(self, name: str) -> str:
        """The connection URL of a source that is a server (PostgreSQL)."""
        source = self.model.sources[name]
        if not isinstance(source, PostgresSource):
            raise self._fail(f"source `{name}` is {source.engine}: it has no url", "sources", name)
        return source.url

    def source_password(self, name: str) -> secrets.Secret | None:
        source = self.model.sources[name]
        ref = getattr(source, "password", None)
        return secrets.resolve(ref, self.base) if ref else None

    def _check_sources(self) -> None:
        for name, source in self.model.sources.items():
            if not isinstance(source, PostgresSource):  # the one kind of source with a url and a password
                continue
            loc = ("sources", name)
            if "@" in source.url.split("://", 1)[-1].split("/", 1)[0] and ":" in source.url.split("://", 1)[-1].split("@", 1)[0]:
                self._note(f"source `{name}` has a password in its url; move it to `password: env:NAME`", *loc, "url")
            if source.password is not None and not secrets.is_reference(source.password):
                self._note(f"source `{name}`: the password is written as a value; write env:NAME or file:PATH", *loc, "password")
                continue  # resolving a literal could echo it
            try:
                self.source_password(name)
            except ValueError as exc:
                self._note(f"source `{name}`: the password cannot be resolved: {exc}", *loc, "password")

    def _checked_token_key(self) -> secrets.Secret | None:
        if not secrets.is_reference(self.model.secrets.get("token_key", "env:")):
            return None  # a literal is reported above; resolving it could echo it
        try:
            return self.token_key
        except ValueError as exc:
            self._note(f"secret `token_key` cannot be resolved: {exc}", "secrets", "token_key")
            return None

    def _check_secrets(self) -> None:
        self._check_sources()
        for name, ref in self.model.secrets.items():
            if not secrets.is_reference(ref):
                self._note(
                    f"secret `{name}` is written as a value; write env:NAME or file:PATH and keep the value out of the policy",
                    "secrets", name,
                )
        key = self._checked_token_key()
        uses_tokens = any(
            _spec(a).action is Action.TOKENIZE for role in self.model.roles.values() for a in role.columns.values()
        )
        if uses_tokens and key is None:
            self._note("a role uses `tokenize` but `secrets.token_key` is not set", "roles")
        if key is not None and len(key.reveal().encode()) < 16:
            self._note("secret `token_key` is too short; use at least 32 random bytes", "secrets", "token_key")


def _tags(tags: str | list[str]) -> tuple[str, ...]:
    items = [tags] if isinstance(tags, str) else list(tags)
    return tuple(t for t in items if t != PUBLIC)


def _spec(action: Action | ActionSpec) -> ActionSpec:
    return action if isinstance(action, ActionSpec) else ActionSpec(action=action)


def load_policy(path: str | Path) -> Policy:
    """Load and check a policy file. Raises :class:`PolicyError` naming file and line."""
    path = Path(path).resolve()
    model, lines, raw = read_policy_file(path)
    return Policy(model, path=path, lines=lines, digest=policy_hash(raw))


def parse_policy(text: str, path: str | Path = "saferoom.yaml") -> Policy:
    """Check a policy given as YAML text, as if read from ``path`` (secrets and includes resolve beside it)."""
    path = Path(path).resolve()
    model, lines, raw = read_policy_bytes(text.encode("utf-8"), path)
    return Policy(model, path=path, lines=lines, digest=policy_hash(raw))
