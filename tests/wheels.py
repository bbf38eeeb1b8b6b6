"""Small real wheels and a real PEP 503 index on 127.0.0.1, for the package tests."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path


def make_wheel(folder: Path, name: str, version: str, *, requires: tuple[str, ...] = (), license: str | None = None,
               expression: str | None = None, classifiers: tuple[str, ...] = ()) -> Path:
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    meta = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}"]
    meta += [f"License-Expression: {expression}"] if expression else []
    meta += [f"License: {license}"] if license else []
    meta += [f"Classifier: {c}" for c in classifiers]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": "\n".join(meta) + "\n\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: saferoom-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_b64(hashlib.sha256(text.encode()).digest())},{len(text.encode())}" for path, text in files.items()]
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, text in files.items():
            archive.writestr(name_in_zip, text)
    return path


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_upstream(root: Path, wheels: list[Path], ages: dict[str, int] | None = None) -> None:
    """A PEP 503 index over the wheels, hashes in the links, as a public index serves it, and its PEP 691 JSON
    with each file's PEP 700 upload time (``ages``: days old by file name; default: uploaded today)."""
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        projects.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
    (root / "simple").mkdir(parents=True, exist_ok=True)
    (root / "simple" / "index.html").write_text("".join(f'<a href="{p}/">{p}</a>\n' for p in projects))
    for project, files in projects.items():
        folder = root / "simple" / project
        folder.mkdir(exist_ok=True)
        links = "".join(f'<a href="../../files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>\n' for w in files)
        (folder / "index.html").write_text(f"<html><body>{links}</body></html>")
        now = datetime.now(UTC)
        files_json = [{"filename": w.name, "url": f"../../files/{w.name}", "hashes": {"sha256": hashlib.sha256(w.read_bytes()).hexdigest()},
                       "upload-time": (now - timedelta(days=(ages or {}).get(w.name, 0))).isoformat().replace("+00:00", "Z")}
                      for w in files]
        (folder / "index.json").write_text(json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": files_json}))
    for wheel in wheels:
        write_release(root, wheel.name.split("-")[0].replace("_", "-").lower(), wheel.name.split("-")[1], [])


def write_release(root: Path, project: str, version: str, vulnerabilities: list[dict[str, object]]) -> None:
    """The release's page of the JSON API (``/pypi/<project>/<version>/json``), as PyPI serves it."""
    page = root / "pypi" / project / version
    page.mkdir(parents=True, exist_ok=True)
    info = {"name": project, "version": version, "yanked": False}
    (page / "json").write_text(json.dumps({"info": info, "last_serial": 1, "urls": [], "vulnerabilities": vulnerabilities}))


class Upstream:
    """A real HTTP server for ``root``; ``break_downloads`` makes wheel downloads die halfway."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.break_downloads = False
        self.release_pages: str | None = None  # "500", "slow" or "garbage": how the JSON API's release pages fail
        self.closing = threading.Event()
        upstream = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(upstream.root), **kwargs)

            def log_message(self, *args):  # type: ignore[no-untyped-def]
                pass

            def do_GET(self):  # type: ignore[no-untyped-def]
                if upstream.release_pages and self.path.startswith("/pypi/"):
                    self._fail(upstream.release_pages)
                    return
                if upstream.break_downloads and self.path.endswith(".whl"):
                    data = (upstream.root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                if "vnd.pypi.simple.v1+json" in self.headers.get("Accept", "") and self.path.endswith("/"):
                    page = upstream.root / self.path.strip("/") / "index.json"
                    if page.is_file():
                        data = page.read_bytes()
                        self.send_response(200)
                        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                super().do_GET()

            def _fail(self, how: str) -> None:
                if how == "slow":
                    upstream.closing.wait(10)  # longer than the client waits; ends when the server closes
                    return
                body = b"{not json" if how == "garbage" else b"Internal Server Error"
                self.send_response(200 if how == "garbage" else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
