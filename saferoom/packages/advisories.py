"""Known vulnerabilities as the index itself publishes them, per release (PyPI's JSON API, as pip-audit asks it).

``GET <base>/pypi/<name>/<version>/json`` beside ``<base>/simple`` answers with a ``vulnerabilities``
list; a withdrawn advisory does not count. Each release is asked once, a few at a time, while the wheels
download. An index that cannot answer for a release stops the sync: a missing answer is not a clean one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx

from saferoom.errors import PackagesError, UsageError

TIMEOUT = 20.0  # seconds per request
WORKERS = 4
OPT_OUT = ("set `index_vulnerabilities: false` under `packages:` to rely on the local OSV feed only (the report "
           "records it)")


@dataclass(frozen=True)
class IndexAdvisory:
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]
    withdrawn: bool


@dataclass(frozen=True)
class Release:
    advisories: tuple[IndexAdvisory, ...]  # in force
    withdrawn: tuple[str, ...]  # ids the index lists as withdrawn


def api_base(index: str) -> str:
    """``https://pypi.org/simple`` -> ``https://pypi.org/pypi``; an index not ending in /simple has no known JSON API."""
    parts = urllib.parse.urlsplit(index)
    path = parts.path.rstrip("/")
    if parts.scheme not in ("http", "https") or not path.endswith("/simple"):
        raise UsageError(f"the index {_shown(index)} has no JSON API saferoom can find (it asks <base>/pypi/<name>/"
                         f"<version>/json beside <base>/simple); {OPT_OUT}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path.removesuffix("/simple") + "/pypi", "", ""))


class IndexAdvisories:
    """The index's advisories by release, asked in the background; an answer is waited for when it is needed."""

    def __init__(self, index: str) -> None:
        self.api = api_base(index)
        self.asked_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._client = httpx.Client(timeout=TIMEOUT, follow_redirects=True, headers={"Accept": "application/json"})
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="index-advisories")
        self._releases: dict[tuple[str, str], Future[Release]] = {}

    def ask(self, releases: Iterable[tuple[str, str]]) -> int:
        """Start asking for the releases not asked yet; how many that is."""
        new = sorted(set(releases) - set(self._releases))
        for name, version in new:
            self._releases[(name, version)] = self._pool.submit(self._fetch, name, version)
        return len(new)

    def affecting(self, name: str, version: str) -> tuple[IndexAdvisory, ...]:
        self.ask([(name, version)])
        return self._releases[(name, version)].result().advisories

    def provenance(self) -> dict[str, object]:
        done = [f.result() for f in self._releases.values() if f.done() and not f.cancelled() and f.exception() is None]
        return {"source": _shown(self.api), "asked_at": self.asked_at, "releases": len(done),
                "advisories": sum(len(r.advisories) for r in done), "withdrawn_skipped": sum(len(r.withdrawn) for r in done)}

    def _fetch(self, name: str, version: str) -> Release:
        url = f"{self.api}/{name}/{version}/json"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return release(response.json())
        except httpx.TimeoutException:
            problem = f"no answer within {TIMEOUT:g} s"
        except httpx.HTTPStatusError as exc:
            problem = f"answered HTTP {exc.response.status_code}"
        except httpx.HTTPError as exc:
            problem = f"could not be reached ({exc})"
        except (ValueError, TypeError, KeyError, AttributeError):
            problem = "answered something that is not the JSON API's release page with a `vulnerabilities` list"
        raise PackagesError(f"the index's vulnerability data for {name} {version} could not be read: {_shown(url)} "
                            f"{problem}; nothing was published. Run the sync again, or, for a mirror that cannot reach "
                            f"the index's JSON API, {OPT_OUT}")

    def __enter__(self) -> IndexAdvisories:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def release(doc: Any) -> Release:
    """A release page's advisories; any other shape raises (TypeError, KeyError, ValueError)."""
    entries = doc["vulnerabilities"]
    if not isinstance(entries, list):
        raise TypeError("`vulnerabilities` is not a list")
    found = [_advisory(entry) for entry in entries]
    return Release(tuple(a for a in found if not a.withdrawn), tuple(a.id for a in found if a.withdrawn))


def _advisory(entry: dict[str, Any]) -> IndexAdvisory:
    fixed, aliases = entry.get("fixed_in") or [], entry.get("aliases") or []
    if not isinstance(entry["id"], str) or not all(isinstance(v, str) for v in [*fixed, *aliases]):
        raise TypeError("an advisory's id, aliases and fixed_in must be strings")
    return IndexAdvisory(entry["id"], tuple(aliases), tuple(fixed), bool(entry.get("withdrawn")))


def _shown(url: str) -> str:
    """The URL without credentials, for messages and the report."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
