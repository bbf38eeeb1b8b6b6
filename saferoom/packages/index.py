"""A static package index: PEP 503 HTML and PEP 691 JSON, with hashes in every link."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

from saferoom.packages.wheels import Wheel

API = {"api-version": "1.0"}


def write_index(root: Path, wheels: list[Wheel]) -> None:
    """``root/simple/`` over ``root/files/``; links are relative, so the folder works anywhere."""
    by_project: dict[str, list[Wheel]] = defaultdict(list)
    for wheel in wheels:
        by_project[wheel.project].append(wheel)
    simple = root / "simple"
    simple.mkdir(parents=True)
    projects = sorted(by_project)
    links = "".join(f'<a href="{html.escape(p)}/">{html.escape(p)}</a><br>\n' for p in projects)
    (simple / "index.html").write_text(_page("Simple index", links))
    (simple / "index.json").write_text(json.dumps({"meta": API, "projects": [{"name": p} for p in projects]}))
    for project, files in by_project.items():
        _project(simple / project, project, sorted(files, key=lambda w: w.path.name))


def _project(folder: Path, project: str, wheels: list[Wheel]) -> None:
    folder.mkdir()
    links = "".join(
        f'<a href="../../files/{html.escape(w.path.name)}#sha256={w.sha256}">{html.escape(w.path.name)}</a><br>\n'
        for w in wheels
    )
    (folder / "index.html").write_text(_page(f"Links for {project}", links))
    files = [{"filename": w.path.name, "url": f"../../files/{w.path.name}", "hashes": {"sha256": w.sha256}} for w in wheels]
    (folder / "index.json").write_text(json.dumps({"meta": API, "name": project, "files": files}))


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
            f"<title>{html.escape(title)}</title></head><body>\n<h1>{html.escape(title)}</h1>\n{body}</body></html>\n")
