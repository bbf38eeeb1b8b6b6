"""`saferoom compile`: the same policy as database views, for tools that connect straight to PostgreSQL.

Per role ``R``: a schema ``saferoom_R`` of ``security_barrier`` views implementing
R's column actions and row filters, and a NOLOGIN role ``saferoom_R`` with USAGE on
that schema and SELECT on those views: nothing else. Row filters on user attributes
read ``current_user``'s values from ``saferoom.user_attributes``.

The token key lives as its HMAC pads in ``saferoom.secret``. Each view computes
tokens inline, from built-in functions and a scalar subquery on that table; a
view reads tables with its owner's rights, so a role gets tokens of the values
the view reads and nothing more. No function takes a value to tokenize, and roles
have no access to schema ``saferoom``, so no role can tokenize a value of its own
choosing (the SECURITY DEFINER ``saferoom.token`` of earlier versions, an oracle,
is dropped). Everything runs under ``search_path = pg_catalog, pg_temp``, and the
token's functions are written ``pg_catalog.…``, so views bind to built-ins even if
look-alike functions were planted elsewhere. Running it again converges;
``--drop`` removes everything it made.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from sqlglot import exp

from saferoom.engines import registry, require_driver
from saferoom.engines.base import Catalog, EngineSpec
from saferoom.engines.postgres import POSTGRES, KeyTable, token_sql
from saferoom.errors import UsageError
from saferoom.guard.views import build_view
from saferoom.policy import Action, ActionSpec, Policy, TableRef
from saferoom.policy.filters import _MARKER
from saferoom.policy.model import SparkSource
from saferoom.secrets import Secret, hmac_pads

SCHEMA = "saferoom"
# Every name in the compiled SQL binds to a built-in or to a qualified object, never to a planted look-alike.
SAFE_SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"


def spec_for(schema: str) -> EngineSpec:
    """PostgreSQL's spec, with the token computed inline from the key table rather than by a callable function."""
    tokenize = token_sql(exp.column("__v"), KeyTable(schema, "secret")).sql("postgres")
    templates = dataclasses.replace(POSTGRES.templates, tokenize=tokenize)
    return dataclasses.replace(POSTGRES, templates=templates)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ident(name: str) -> str:
    """Names that go into DDL must be plain words; anything else is refused, not quoted around."""
    if not _NAME.match(name):
        raise UsageError(f"`{name}` cannot be a database name; use letters, digits and _")
    return name


def role_name(schema: str, role: str) -> str:
    return ident(f"{schema}_{role}".lower().replace("-", "_"))


def compile_sql(policy: Policy, catalog: dict[tuple[str, str, str], dict[str, str]], schema: str = SCHEMA) -> list[str]:
    """The statements that create or update everything; the token key is set separately, never printed."""
    schema = ident(schema)
    statements = [SAFE_SEARCH_PATH, *_private(schema), *_obsolete(schema)]
    spec = spec_for(schema)
    for role in policy.model.roles:
        statements += list(_role(policy, role, catalog, schema, spec))
    statements += list(_attributes(policy, schema))
    return statements


def drop_sql(policy: Policy, schema: str = SCHEMA) -> list[str]:
    """Schemas first (their grants go with them), then whatever else the roles were given, then the roles."""
    schema = ident(schema)
    names = [role_name(schema, role) for role in policy.model.roles]
    statements = [SAFE_SEARCH_PATH, *(f'DROP SCHEMA IF EXISTS "{name}" CASCADE' for name in names)]
    statements.append(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    statements += [_if_role(name, f'DROP OWNED BY "{name}"; DROP ROLE "{name}"', exists=True) for name in names]
    return statements


def set_key_sql(schema: str = SCHEMA) -> str:
    """Parameterised: the key's pads travel as bound values, never inside SQL text."""
    return (f'INSERT INTO "{schema}".secret (id, inner_pad, outer_pad) VALUES (1, $1, $2) '
            "ON CONFLICT (id) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, outer_pad = EXCLUDED.outer_pad")


def key_pads(key: Secret) -> tuple[bytes, bytes]:
    """HMAC's K ^ ipad and K ^ opad (RFC 2104), so the database needs only its built-in sha256."""
    return hmac_pads(key)


def _private(schema: str) -> Iterator[str]:
    yield f'CREATE SCHEMA IF NOT EXISTS "{schema}"'
    yield f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC'
    yield (f'CREATE TABLE IF NOT EXISTS "{schema}".secret (id int PRIMARY KEY CHECK (id = 1), '
           "inner_pad bytea NOT NULL, outer_pad bytea NOT NULL)")
    yield f'REVOKE ALL ON "{schema}".secret FROM PUBLIC'
    yield (f'CREATE TABLE IF NOT EXISTS "{schema}".user_attributes (db_user name NOT NULL, attribute text NOT NULL, '
           "value text NOT NULL, PRIMARY KEY (db_user, attribute))")
    yield f'REVOKE ALL ON "{schema}".user_attributes FROM PUBLIC'


def _obsolete(schema: str) -> Iterator[str]:
    """What earlier versions made and this one must not leave: the SECURITY DEFINER token function, a token
    oracle for every role granted it. Views still calling it go with it (a role's own views are remade below)."""
    yield f'DROP FUNCTION IF EXISTS "{schema}".token(anyelement) CASCADE'


def _role(policy: Policy, role: str, catalog: dict[tuple[str, str, str], dict[str, str]], schema: str,
          spec: EngineSpec) -> Iterator[str]:
    name = role_name(schema, role)
    yield _if_role(name, f'CREATE ROLE "{name}" NOLOGIN', exists=False)
    yield f'CREATE SCHEMA IF NOT EXISTS "{name}"'
    yield f'REVOKE ALL ON SCHEMA "{name}" FROM PUBLIC'
    yield f'GRANT USAGE ON SCHEMA "{name}" TO "{name}"'
    yield f'REVOKE ALL ON SCHEMA "{schema}" FROM "{name}"'  # earlier versions granted USAGE
    for key, ref in policy.tables.items():
        if not registry.serves(policy, ref.source, spec):
            continue
        address = (ref.source.lower(), (ref.schema or spec.default_schema).lower(), ref.name.lower())
        if address not in catalog:
            raise UsageError(f"table {key} is in the policy but not in the database; run `saferoom lint`")
        view = build_view(policy, role, {}, ref, catalog[address], spec, binder=lambda p: _current_user_filter(p, schema))
        table = ident(ref.name)
        yield f'DROP VIEW IF EXISTS "{name}"."{table}"'
        yield f'CREATE VIEW "{name}"."{table}" WITH (security_barrier = true) AS {view.sql("postgres")}'
        yield f'GRANT SELECT ON "{name}"."{table}" TO "{name}"'


def _current_user_filter(predicate: exp.Expr, schema: str) -> exp.Expr:
    """{user.attr} becomes the current database user's value from the mapping table (no value: no rows)."""

    def bind(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name.startswith(_MARKER):
            attribute = node.name[len(_MARKER):]
            table = exp.table_("user_attributes", db=schema, quoted=True, alias="ua")
            lookup = exp.select(exp.column("value", table="ua")).from_(table).where(
                exp.and_(exp.column("db_user", table="ua").eq(exp.func("current_user")),
                         exp.column("attribute", table="ua").eq(exp.Literal.string(attribute)))
            )
            return exp.Subquery(this=lookup)
        return node

    return predicate.copy().transform(bind)


def _attributes(policy: Policy, schema: str) -> Iterator[str]:
    yield f'DELETE FROM "{schema}".user_attributes'
    for user, spec in policy.model.users.items():
        for attribute, value in spec.attributes.items():
            if isinstance(value, list):
                raise UsageError(f"user {user}: list attribute `{attribute}` cannot be compiled to a view filter yet")
            row = exp.Tuple(expressions=[exp.Literal.string(user), exp.Literal.string(attribute), exp.Literal.string(str(value))])
            yield f'INSERT INTO "{schema}".user_attributes VALUES {row.sql("postgres")}'


def _if_role(name: str, statement: str, *, exists: bool) -> str:
    test = "" if exists else "NOT "
    return f"DO $$ BEGIN IF {test}EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN {statement}; END IF; END $$"


def role_grants(policy: Policy, schema: str = SCHEMA) -> Iterator[str]:
    """Give each policy user that exists as a database role the database role of their first role."""
    for user, spec in policy.model.users.items():
        target, login = role_name(schema, spec.roles[0]), ident(user)
        yield f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN GRANT \"{target}\" TO \"{login}\"; END IF; END $$"


class Cursor(Protocol):
    def execute(self, operation: str, parameters: Sequence[object] | None = None) -> object: ...


def run(cursor: Cursor, statements: list[str], key: Secret | None, schema: str = SCHEMA) -> None:
    """Run the statements inside the caller's transaction, then store the key's pads as bound values."""
    for statement in statements:
        cursor.execute(statement)
    if key is not None:
        cursor.execute(set_key_sql(ident(schema)), parameters=key_pads(key))


__all__ = ["admin_target", "apply", "compile_spark", "compile_sql", "drop_sql", "key_pads", "role_grants", "run", "script",
           "set_key_sql"]


def postgres_source(policy: Policy) -> str:
    """The PostgreSQL source the views are compiled into."""
    names = registry.sources_of(policy, registry.engine("postgres"))
    if not names:
        raise UsageError("the policy has no postgres source to compile into")
    return names[0]


def apply(policy: Policy, admin_url: str, password: Secret | None, schema: str = SCHEMA, *, drop: bool = False) -> int:
    """Run the compiled SQL in one transaction; returns the number of statements run."""
    require_driver("postgres")
    import adbc_driver_postgresql.dbapi as dbapi

    from saferoom.engines.postgres import PostgresEngine, _with_password

    if drop:
        statements = drop_sql(policy, schema)
    else:
        source = postgres_source(policy)
        reader = PostgresEngine(source, policy.source_url(source), policy.source_password(source))
        try:
            statements = compile_sql(policy, reader.catalog(), schema) + list(role_grants(policy, schema))
        finally:
            reader.close()
    try:
        with dbapi.connect(_with_password(admin_url, password)) as conn, conn.cursor() as cur:
            run(cur, statements, None if drop else policy.token_key, schema)
            conn.commit()
    except dbapi.Error as exc:  # translate the driver's errors once, here, without echoing credentials
        message = str(exc).replace(password.reveal(), "***") if password else str(exc)
        raise UsageError(f"compile --apply failed, nothing was changed: {message.splitlines()[0][:300]}") from None
    return len(statements)


def compile_spark(policy: Policy, catalog: Callable[[], Catalog] | Catalog, schema: str = SCHEMA) -> list[str]:
    """Per-role databases of views for Spark, over the declared files; comments first, then statements.

    The columns are the policy's own: a view lists what the policy declares, so Spark is opened (``catalog``
    called) only when some view needs a column's type: a typed ``null``, or ``generalize``, whose expression
    depends on it. Spark's catalog has no place a role could use a key without reading it, so a role that
    tokenizes is left out with the reason: serve it through the gateway, or from a build.
    """
    read = _once(catalog)
    comments: list[str] = []
    statements: list[str] = []
    for role in policy.model.roles:
        name = role_name(schema, role)
        if any(_action(a) is Action.TOKENIZE for a in policy.model.roles[role].columns.values()):
            comments.append(f"-- role {role}: tokenize needs a protected key, which a Spark catalog cannot hold, "
                            "so it is served through the gateway or from `saferoom build`")
            continue
        statements.append(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        statements += [_spark_view(policy, role, name, ref, read) for ref in _file_tables(policy)]
    return comments + [_unsplittable(statement) for statement in statements]


def _action(spec: Action | ActionSpec) -> Action:
    return spec.action if isinstance(spec, ActionSpec) else spec


def _once(catalog: Callable[[], Catalog] | Catalog) -> Callable[[], Catalog]:
    """The catalog, read at the first call only (reading it starts Spark)."""
    if callable(catalog):
        return functools.cache(catalog)
    return lambda: catalog


def _file_tables(policy: Policy) -> list[TableRef]:
    """Policy tables declared by path on a Spark source: only files compile (a catalog table is the catalog's)."""
    refs = []
    for ref in policy.tables.values():
        source = policy.model.sources[ref.source]
        if isinstance(source, SparkSource) and ref.name in source.tables and source.tables[ref.name].path:
            refs.append(ref)
    return refs


_TYPED = (Action.NULL, Action.GENERALIZE)  # the actions whose expression depends on the column's type


def _types(policy: Policy, role: str, ref: TableRef, read: Callable[[], Catalog]) -> dict[str, str]:
    """Column types for a view: Spark's when an action needs them, else the declared columns, untyped."""
    declared = policy.columns(ref.key)
    if all(policy.rule(role, ref.key, column).action not in _TYPED for column in declared):
        return dict.fromkeys(declared, "")  # allow, mask, redact and deny read no type
    address = (ref.source.lower(), "default", ref.name.lower())
    catalog = read()
    if address not in catalog:
        raise UsageError(f"table {ref.key} is in the policy but not in Spark; run `saferoom lint`")
    return catalog[address]


def _spark_view(policy: Policy, role: str, database: str, ref: TableRef, read: Callable[[], Catalog]) -> str:
    from saferoom.engines.spark import SPARK

    physical = dataclasses.replace(SPARK, physical=None, catalog_in_names=False)
    files = policy.model.sources[ref.source].tables[ref.name]  # type: ignore[union-attr]
    view = build_view(policy, role, {}, ref, _types(policy, role, ref, read), physical, user_filters=False)
    view.args["from_"].this.replace(exp.Table(this=exp.to_identifier(files.path, quoted=True), db=exp.to_identifier(files.format),
                                              alias=exp.TableAlias(this=exp.to_identifier("__saferoom_t"))))
    return f"CREATE OR REPLACE VIEW `{database}`.`{ident(ref.name)}` AS {view.sql('spark')}"


def _unsplittable(statement: str) -> str:
    """Notebooks and `spark-sql -f` alike run the script a statement at a time, split at `;`: a `;` inside a
    path or a filter's text would cut a statement in two, so it is refused rather than printed."""
    if ";" in statement:
        raise UsageError("a `;` in a Spark table's path or in a row filter's text would split the compiled "
                         f"statement in two when it is run: {statement.split(' AS ')[0]}; remove it, or serve "
                         "that role through the gateway")
    return statement


def _postgres_script(policy: Policy, catalog: Catalog, schema: str) -> str:
    statements = compile_sql(policy, catalog, schema) + list(role_grants(policy, schema))
    # one transaction, because SET LOCAL lasts only for one
    return ("-- saferoom compile: the token key is loaded by --apply, never printed\n"
            "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n")


def _spark_script(policy: Policy, catalog: Callable[[], Catalog], schema: str) -> str:
    """Comments first, each on its own line and without `;`; then every statement ends with `;` and a line end."""
    lines = compile_spark(policy, catalog, schema)
    return "".join(f"{line}\n" if line.startswith("--") else f"{line};\n" for line in lines)


def _postgres_catalog_script(policy: Policy, catalog: Callable[[], Catalog], schema: str) -> str:
    return _postgres_script(policy, catalog(), schema)


# what each engine's compile prints; only PostgreSQL's can be applied from here
# (each is given how to read the catalog, and reads it only if it must: for Spark that starts a session)
SCRIPTS: dict[str, Callable[[Policy, Callable[[], Catalog], str], str]] = {"postgres": _postgres_catalog_script,
                                                                          "spark": _spark_script}
APPLIES = ("postgres",)


def script(policy: Policy, engine: str = "postgres", schema: str = SCHEMA) -> str:
    """What `saferoom compile` prints for ``engine``: the SQL that makes every role's views; never the token key."""
    _known(engine)
    return SCRIPTS[engine](policy, lambda: _catalog(policy, engine), schema)


def _known(engine: str) -> None:
    if engine not in SCRIPTS:
        raise UsageError(f"compile supports {' and '.join(SCRIPTS)} (asked for {engine})")


def _catalog(policy: Policy, engine: str) -> dict[tuple[str, str, str], dict[str, str]]:
    from saferoom.session import open_engine  # the engine factory lives above this module

    reader = open_engine(policy, engine)
    try:
        return reader.catalog()
    finally:
        reader.close()


def admin_target(policy: Policy, admin_url: str | None, admin_password: Secret | None,
                 engine: str = "postgres") -> tuple[str, Secret | None]:
    """Where --apply and --drop connect, and with which password.

    ``admin_url`` when given, else the PostgreSQL source's url; ``admin_password`` when given, else the
    source's own password, but only when connecting as the source: it is not sent to another account."""
    _known(engine)
    if engine not in APPLIES:
        raise UsageError(f"--apply and --drop run in PostgreSQL; for {engine}, run the printed SQL in its catalog")
    source = postgres_source(policy)
    if admin_url:
        return admin_url, admin_password
    password = admin_password if admin_password is not None else policy.source_password(source)
    return policy.source_url(source), password
