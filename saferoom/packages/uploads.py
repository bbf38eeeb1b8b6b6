"""When a release was uploaded, from the index's PEP 691 JSON pages (PEP 700 ``upload-time``)."""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime
from pathlib import Path

import httpx

ACCEPT = "application/vnd.pypi.simple.v1+json"


def uploaded(index: str, project: str, filename: str) -> datetime | None:
    """The upload time of ``filename``; None when the index does not say (an HTML-only or file index, or an error)."""
    page = _page(index.rstrip("/") + f"/{project}/")
    for entry in (page or {}).get("files", []):
        when = entry.get("upload-time")
        if entry.get("filename") == filename and isinstance(when, str):
            return _time(when)
    return None


def _page(url: str) -> dict[str, list[dict[str, object]]] | None:
    try:
        if url.startswith("file://"):
            path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)) / "index.json"
            return json.loads(path.read_text()) if path.is_file() else None
        response = httpx.get(url, headers={"Accept": ACCEPT}, timeout=30, follow_redirects=True)
        if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
            return None
        return response.json()  # type: ignore[no-any-return]
    except (httpx.HTTPError, OSError, ValueError):
        return None


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
