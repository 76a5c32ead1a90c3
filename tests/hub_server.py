"""A small local stand-in for the Hugging Face Hub's HTTP API, enough for
`HfApi.create_repo` and `HfApi.upload_folder` with regular (non-LFS) uploads, and for
`snapshot_download` of what was pushed. Started on 127.0.0.1 inside the tests and reached
through HF_ENDPOINT; files land in `root/<repo>/`."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


COMMIT = "0123abcd" * 5


class HubServer:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.repos: dict[str, dict] = {}
        self.validated: list[dict] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _json(self, code: int, obj: dict | list) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                path = self.path.split("?")[0]
                srv.requests.append(("POST", path, self.headers.get("Authorization")))
                if path == "/api/repos/create":
                    d = json.loads(raw)
                    repo = f"{d.get('organization') or ''}/{d['name']}".lstrip("/") if "/" not in d["name"] else d["name"]
                    srv.repos[repo] = d
                    return self._json(200, {"url": f"{srv.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the Hub checks a model card's metadata before the commit
                    import yaml

                    d = json.loads(raw)
                    try:
                        content = d["content"]
                        assert content.startswith("---\n"), "README.md has no YAML front matter"
                        meta = yaml.safe_load(content.split("\n---", 1)[0][4:])
                        assert isinstance(meta, dict)
                        srv.validated.append(meta)
                    except Exception as e:  # noqa: BLE001
                        return self._json(400, {"error": f"invalid YAML metadata: {e}"})
                    return self._json(200, {"errors": [], "warnings": []})
                parts = path.strip("/").split("/")
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(raw)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            v = item["value"]
                            dest = srv.root / repo / v["path"]
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            dest.write_bytes(base64.b64decode(v["content"]))
                    return self._json(200, {"commitUrl": f"{srv.url}/{repo}/commit/0123abcd", "commitOid": COMMIT})
                return self._json(404, {"error": f"not emulated: POST {path}"})

            def _file(self, head: bool) -> None:
                """GET/HEAD /ORG/NAME/resolve/REV/PATH: a pushed file, with the headers
                huggingface_hub's downloader reads (commit, ETag, size)."""
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
                f = srv.root / repo / rel
                if len(parts) < 5 or parts[2] != "resolve" or not f.is_file():
                    return self._json(404, {"error": f"no file {self.path}"})
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def do_HEAD(self):
                srv.requests.append(("HEAD", self.path, self.headers.get("Authorization")))
                self._file(head=True)

            def do_GET(self):
                srv.requests.append(("GET", self.path, self.headers.get("Authorization")))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[4] == "revision":  # model info for snapshot_download
                    repo = f"{parts[2]}/{parts[3]}"
                    files = sorted(str(p.relative_to(srv.root / repo)) for p in (srv.root / repo).rglob("*") if p.is_file())
                    if not files:
                        return self._json(404, {"error": f"no repo {repo}"})
                    return self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files], "private": False})
                if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[4] == "tree":  # the file listing
                    repo = f"{parts[2]}/{parts[3]}"
                    files = sorted(p for p in (srv.root / repo).rglob("*") if p.is_file())
                    body = [{"type": "file", "path": str(p.relative_to(srv.root / repo)), "size": p.stat().st_size, "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]
                    return self._json(200, body)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._file(head=False)
                return self._json(404, {"error": f"not emulated: GET {self.path}"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
