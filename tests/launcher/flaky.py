"""A flaky DICOMweb server for the tests of launcher/pacs: a proxy before a real Orthanc that answers 503 to the
first request of each path (GET and POST), stalls the first instance retrieval once, and with `break_sop` sends half
of every retrieval of that instance and hangs up. `start_proxy(orthanc)` gives the proxy and its DICOMweb root."""

from __future__ import annotations

import http.client
import http.server
import threading
import time

from demo.orthanc import Orthanc


class Flaky(http.server.ThreadingHTTPServer):
    """The proxy's state: what it has seen and the failures it made, by kind ("503", "stall", "broken")."""

    def __init__(self, upstream: int, *, break_sop: str = "") -> None:
        self.upstream, self.break_sop = upstream, break_sop
        self.seen: set[tuple[str, str]] = set()
        self.failures = {"503": 0, "stall": 0, "broken": 0}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Proxy)


class _Proxy(http.server.BaseHTTPRequestHandler):
    server: Flaky

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._forward("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._forward("POST")

    def _forward(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else None
        with self.server.lock:
            first = (method, self.path) not in self.server.seen
            self.server.seen.add((method, self.path))
            retrieval = method == "GET" and "/instances/" in self.path and not self.path.endswith("/metadata")
            stall = not first and retrieval and self.server.failures["stall"] == 0
            if first or stall:
                self.server.failures["503" if first else "stall"] += 1
        if first:
            self.send_error(503)
            return
        if stall:
            time.sleep(1.5)
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=10)
        upstream.request(method, self.path, body=body_in,
                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        answer = upstream.getresponse()
        body = answer.read()
        broken = bool(self.server.break_sop) and retrieval and self.path.endswith(self.server.break_sop)
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if broken else body)
        if broken:
            self.server.failures["broken"] += 1
            self.close_connection = True


def start_proxy(server: Orthanc, **kwargs: str) -> tuple[Flaky, str]:
    """A running proxy before `server` (stop it with `.shutdown()`), and its DICOMweb root."""
    proxy = Flaky(server.http_port, **kwargs)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy, f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web"
