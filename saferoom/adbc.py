"""An ADBC connection to the gateway's Flight SQL endpoint: ``pandas.read_sql(sql, saferoom.adbc.connect())``.

pandas builds a frame straight from Arrow only from an ADBC connection (``pandas.io.sql``: an
``adbc_driver_manager.dbapi.Connection`` is read with ``fetch_arrow_table()``); through PEP 249 it builds the frame
from Python row tuples. The connection is the maintained ADBC Flight SQL driver's, with the user's token on every
call; the gateway guards, limits and audits each query as it does on its HTTP route.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from saferoom.client import RemoteSession, load_credentials
from saferoom.errors import AuthError, UsageError

FLIGHT_SCHEMES = ("grpc", "grpc+tcp", "grpc+tls")
ROLE_HEADER = "adbc.flight.sql.rpc.call_header.x-saferoom-role"


def connect(url: str | None = None, token: str | None = None, role: str | None = None, *,
            verify: bool | str = True) -> Any:
    """An ADBC DB-API connection (``adbc_driver_manager.dbapi.Connection``) as the token's user.

    ``url``: the gateway (``https://gateway:8470``, which says where its Flight SQL endpoint listens) or that
    endpoint itself (``grpc+tls://gateway:8471``); by default ``SAFEROOM_URL`` or what `saferoom login` saved.
    ``token``: by default ``SAFEROOM_TOKEN`` or the saved one. ``verify``: a CA bundle's path for a private CA, as
    for :func:`saferoom.connect`. Queries run in autocommit mode: the gateway is read-only.
    """
    driver = _driver()
    saved = load_credentials()
    url = url or os.environ.get("SAFEROOM_URL") or saved.get("url")
    token = token or os.environ.get("SAFEROOM_TOKEN") or saved.get("token")
    if not token:
        raise AuthError("no token: pass token=, set SAFEROOM_TOKEN, or run `saferoom login`")
    if not url:
        raise UsageError("no gateway: pass url=, set SAFEROOM_URL, or run `saferoom login`")
    options = {"adbc.flight.sql.authorization_header": f"Bearer {token}", **_trust(verify)}
    if role:
        options[ROLE_HEADER] = role
    return driver.connect(flight_sql_uri(url, token, role, verify=verify), db_kwargs=options, autocommit=True)


def flight_sql_uri(url: str, token: str, role: str | None = None, *, verify: bool | str = True) -> str:
    """The Flight SQL endpoint of the gateway at ``url``: given as such, or as the gateway tells (``/v1/whoami``)."""
    parts = urlsplit(url)
    if parts.scheme in FLIGHT_SCHEMES:
        return url
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{parts.scheme or url!r} is not a gateway URL: give https://HOST:PORT or grpc+tls://HOST:PORT")
    with RemoteSession(url, token, role, verify=verify) as session:
        port = session.call("GET", "/v1/whoami").get("flight_sql")
    if port is None:
        raise UsageError(f"the gateway at {url} serves no Flight SQL endpoint; it is started with "
                         "`saferoom serve --flight-sql PORT`")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{'grpc+tls' if parts.scheme == 'https' else 'grpc'}://{host}:{port}"


def _trust(verify: bool | str) -> dict[str, str]:
    """The driver's TLS options: a private CA's certificates, or (verify=False) no check of the certificate."""
    if isinstance(verify, str):
        try:
            with open(verify) as bundle:
                return {"adbc.flight.sql.client_option.tls_root_certs": bundle.read()}
        except OSError as exc:
            raise UsageError(f"the CA bundle {verify} cannot be read: {exc.strerror}") from None
    return {} if verify else {"adbc.flight.sql.client_option.tls_skip_verify": "true"}


def _driver() -> ModuleType:
    try:
        import adbc_driver_flightsql.dbapi
    except ImportError as exc:
        raise UsageError(f"saferoom.adbc needs the adbc extra: pip install 'saferoom[adbc]' ({exc.name} is missing)") from None
    return adbc_driver_flightsql.dbapi
