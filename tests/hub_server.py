"""A real HTTP server on loopback that speaks the two routes Danqing downloads through:
HuggingFace's (``/api/models/<id>/tree/<rev>``, ``/<id>/resolve/<rev>/<path>``, also what
hf-mirror.com serves) and ModelScope's (``/api/v1/models/<id>/repo/files``,
``/api/v1/models/<id>/repo?FilePath=``), with ``Range`` requests, and faults on demand: a
connection dropped mid-file, a wrong advertised checksum, a slow trickle."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.drops: dict[str, list[int]] = {}  # path -> bytes to send before dropping, per request
        self.wrong_sha: set[str] = set()
        self.slow: set[str] = set()
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header) of every file request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sha(self, path: str, data: bytes) -> str:
        if path in self.wrong_sha:
            return hashlib.sha256(data + b"tampered").hexdigest()
        return hashlib.sha256(data).hexdigest()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, value, status: int = 200) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
                # HuggingFace
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    repo = "/".join(parts[2:4])
                    files = hub.repos.get(repo)
                    if files is None:
                        return self._json({"error": "Repository not found"}, 404)
                    return self._json([{"type": "file", "path": p, "size": len(d),
                                        **({"lfs": {"oid": hub.sha(p, d), "size": len(d)}} if not p.endswith(".json") else {})}
                                       for p, d in files.items()])
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._file("/".join(parts[:2]), "/".join(parts[4:]))
                # ModelScope
                if parts[:3] == ["api", "v1", "models"] and len(parts) == 7 and parts[5:] == ["repo", "files"]:
                    repo = "/".join(parts[3:5])
                    files = hub.repos.get(repo)
                    if files is None:
                        return self._json({"Code": 10010205001, "Message": "not found"}, 404)
                    return self._json({"Code": 200, "Data": {"Files": [
                        {"Name": p.split("/")[-1], "Path": p, "Size": len(d), "Sha256": hub.sha(p, d), "Type": "blob"}
                        for p, d in files.items()]}})
                if parts[:3] == ["api", "v1", "models"] and len(parts) == 6 and parts[5] == "repo":
                    return self._file("/".join(parts[3:5]), query.get("FilePath", ""))
                self._json({"error": "no route"}, 404)

            def _file(self, repo: str, path: str) -> None:
                data = hub.repos.get(repo, {}).get(path)
                header = self.headers.get("Range")
                hub.ranges.append((path, header))
                if data is None:
                    return self._json({"error": "Entry not found"}, 404)
                start = 0
                if header and header.startswith("bytes="):
                    start = int(header[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                drops = hub.drops.get(path)
                if drops:
                    cut = drops.pop(0)
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in hub.slow:
                    for i in range(0, len(body), 4096):
                        self.wfile.write(body[i:i + 4096])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                self.wfile.write(body)

        return Handler
