"""A file as a reviewer sees it on the web page: a table (CSV, Parquet), a notebook's cells, text, or an image.

Values go out as JSON strings; the page writes them as text, never as markup. Previews are bounded
(rows, characters), so a huge file cannot make a huge page.

A notebook's PNG and JPEG outputs go out as base64 (each at most :data:`IMAGE_BYTES`, and only when the
bytes start as that format does), for the page to show as a ``data:`` image, which its CSP allows for
images alone; an SVG output goes out as its text, shown as text: an SVG can hold script, so it is never
drawn.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import polars as pl

ROWS = 200
CHARS = 200_000
IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
IMAGE_BYTES = 2 << 20
MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def preview(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".parquet", ".tsv"):
            return _table(path, suffix)
        if suffix == ".ipynb":
            return _notebook(path)
    except (pl.exceptions.PolarsError, OSError, ValueError, KeyError, TypeError) as exc:
        return {"kind": "unreadable", "problem": str(exc).splitlines()[0][:300]}
    if suffix in IMAGES:
        return {"kind": "image"}
    return _text(path)


def _table(path: Path, suffix: str) -> dict[str, Any]:
    if suffix == ".parquet":
        frame = pl.scan_parquet(path).head(ROWS).collect()
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    else:
        frame = pl.read_csv(path, n_rows=ROWS, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
        rows = None
    text = frame.select(pl.all().cast(pl.String))
    return {"kind": "table", "columns": text.columns, "rows": text.rows(), "total": rows, "shown": text.height}


def _notebook(path: Path) -> dict[str, Any]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return {"kind": "notebook", "cells": [_cell(c) for c in cells[:500]]}


def _cell(cell: dict[str, Any]) -> dict[str, Any]:
    outputs = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        text = out.get("text") or data.get("text/plain") or ""
        outputs.append({"text": _joined(text)[:CHARS], **_image(data)})
    return {"type": str(cell.get("cell_type", "code")), "source": _joined(cell.get("source", ""))[:CHARS], "outputs": outputs}


def _image(data: dict[str, Any]) -> dict[str, Any]:
    """An output's image, as the page may show it: PNG or JPEG bytes it checked, else SVG as text, or a note why not."""
    kind = next((k for k in MAGIC if k in data), None)
    if kind is None:
        return {"svg": _joined(data["image/svg+xml"])[:CHARS]} if "image/svg+xml" in data else {"image": None}
    encoded = "".join(_joined(data[kind]).split())
    if len(encoded) > IMAGE_BYTES * 4 // 3 + 4:
        return {"image": None, "note": f"an image output over {IMAGE_BYTES:,} bytes, not shown; download the notebook"}
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(MAGIC[kind]):
        return {"image": None, "note": f"an output that says it is {kind} but is not, not shown"}
    return {"image": {"type": kind, "base64": base64.b64encode(raw).decode()}}


def _joined(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def _text(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        head = handle.read(CHARS)
    try:
        return {"kind": "text", "text": head.decode("utf-8"), "cut": path.stat().st_size > CHARS}
    except UnicodeDecodeError:
        return {"kind": "binary", "size": path.stat().st_size}
