"""A Hugging Face hub on localhost, for tests of what downloads (prefetch): the few endpoints huggingface_hub
and datasets call, answered from folders (root/models/<org>/<name>/..., root/datasets/<org>/<name>/...).

Point a process at it with HF_ENDPOINT=<server.url>. Requests are recorded in `server.requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # one revision per repository: main


class Hub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, kind: str, repo_id: str) -> Path:
        return self.root / kind / repo_id

    def _files(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def _answer(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append(f"{req.command} {path}")
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "api" and parts[1] in ("models", "datasets"):
                kind, repo_id, rest = parts[1], "/".join(parts[2:4]), parts[4:]
                folder = self.repo(kind, repo_id)
                if not folder.is_dir():
                    return self._json(req, {"error": "Repository not found"}, 404, head, repo_missing=True)
                if not rest or rest[:1] == ["revision"]:
                    siblings = [{"rfilename": str(p.relative_to(folder))} for p in self._files(folder)]
                    return self._json(req, {"id": repo_id, "sha": COMMIT, "siblings": siblings}, 200, head)
                if rest[:1] == ["tree"]:
                    sub = folder.joinpath(*rest[2:])
                    recursive = "recursive=true" in urlparse(req.path).query.lower()
                    listed = self._files(sub) if recursive else sorted(sub.iterdir())
                    entries = [
                        {"type": "directory", "path": str(p.relative_to(folder)), "oid": "0" * 40}
                        if p.is_dir()
                        else {
                            "type": "file",
                            "path": str(p.relative_to(folder)),
                            "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                        }
                        for p in listed
                    ]
                    return self._json(req, entries, 200, head)
            kind = "datasets" if parts[0] == "datasets" else "models"
            if kind == "datasets":
                parts = parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                file = self.repo(kind, "/".join(parts[:2])).joinpath(*parts[4:])
                if file.is_file():
                    body = file.read_bytes()
                    req.send_response(200)
                    req.send_header("Content-Length", str(len(body)))
                    req.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
                    req.send_header("X-Repo-Commit", COMMIT)
                    req.end_headers()
                    if not head:
                        req.wfile.write(body)
                    return
                return self._json(req, {"error": "Entry not found"}, 404, head, entry_missing=True)
            self._json(req, {"error": f"not served here: {path}"}, 404, head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, req, obj, status: int, head: bool, repo_missing=False, entry_missing=False) -> None:
        body = json.dumps(obj).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        if repo_missing:
            req.send_header("X-Error-Code", "RepoNotFound")
        if entry_missing:
            req.send_header("X-Error-Code", "EntryNotFound")
        if status == 200:
            req.send_header("X-Repo-Commit", COMMIT)
        req.end_headers()
        if not head:
            req.wfile.write(body)
