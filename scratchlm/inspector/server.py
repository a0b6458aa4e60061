"""The inspector's web server: the standard library's ``http.server``, one model, six routes.

====================  ======  =====================================================================
route                 method  answer
====================  ======  =====================================================================
``/``                 GET     the page (``static/index.html``)
``/inspector.js``     GET     its script; ``/inspector.css`` its style sheet
``/api/model``        GET     :func:`~.analysis.model_info` and the checkpoint's file name
``/api/inspect``      POST    ``{"prompt", "target"?, "top_k"?}`` -> :func:`~.analysis.inspect_prompt`
``/api/sample``       POST    ``{"prompt", "temperature"?, "top_k"?, "seed"?}`` ->
                              :func:`~.analysis.sample_step`
====================  ======  =====================================================================

What it refuses, each with a JSON ``{"error": ...}``: any other path (404: the three static files
are a fixed table, never a path joined onto a folder, so nothing else on disk can be reached), any
other method (405), a ``Host`` header naming another server (403: a web page elsewhere cannot
reach this one through a DNS name that points here), a request another site's page sent
(``Sec-Fetch-Site: cross-site``, 403), a POST whose ``Content-Type`` is not JSON (415: a page
elsewhere cannot send one without the browser asking first, and ``OPTIONS`` is refused), a body
that is not a JSON object or is over 64 KiB (400, 413), and prompts the model cannot read (400,
the reason in words); anything unexpected is a 500 with its message, never a dropped
connection. A client gets 30 s to send its request. It binds to 127.0.0.1 unless told otherwise;
bound to all interfaces (``0.0.0.0`` or ``::``), it answers any ``Host``. One request computes
at a time (the model's caches are shared).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .analysis import PromptError, inspect_prompt, model_info, model_kind, sample_step

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: the files the server can send: route -> (file in static/, content type)
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/inspector.js": ("inspector.js", "text/javascript; charset=utf-8"),
         "/inspector.css": ("inspector.css", "text/css; charset=utf-8")}
MAX_BODY = 64 * 1024
#: the page loads nothing from anywhere but this server
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_file(name: str) -> bytes:
    with open(os.path.join(_STATIC, name), "rb") as f:
        return f.read()


class InspectorServer(ThreadingHTTPServer):
    """``InspectorServer(model, tokenizer, checkpoint="", host="127.0.0.1", port=8000)``: bound
    on creation (port 0: any free port, see ``server_address``); ``serve_forever()`` serves."""

    daemon_threads = True
    allow_reuse_address = False          # a port in use is an error, not a shared socket

    def __init__(self, model, tokenizer, checkpoint="", host="127.0.0.1", port=8000):
        model_kind(model)                                         # a clear error for the others
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.model, self.tokenizer = model, tokenizer
        self.checkpoint = os.path.basename(os.fspath(checkpoint)) if checkpoint else ""
        self.lock = threading.Lock()
        self.files = {route: (static_file(name), kind) for route, (name, kind) in FILES.items()}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def host_ok(self, header: str) -> bool:
        """Is ``header`` (a request's ``Host``) this server? Bound to all interfaces, any is."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            return True
        names = {host, f"[{host}]", "127.0.0.1", "localhost", "[::1]"}
        return header in {f"{n}:{port}" for n in names} | (names if port == 80 else set())

    def answer(self, route, body):
        """``(status, JSON-able)`` for an API route."""
        with self.lock:
            if route == "/api/model":
                return 200, model_info(self.model, self.tokenizer) | {
                    "checkpoint": self.checkpoint}
            if route == "/api/inspect":
                return 200, inspect_prompt(self.model, self.tokenizer, body.get("prompt"),
                                           target=body.get("target"),
                                           top_k=body.get("top_k", 10))
            return 200, sample_step(self.model, self.tokenizer, body.get("prompt"),
                                    temperature=body.get("temperature", 1.0),
                                    top_k=body.get("top_k"), seed=body.get("seed"))


class _Handler(BaseHTTPRequestHandler):
    server: InspectorServer
    server_version = "scratchlm-inspector"
    sys_version = ""
    timeout = 30                                   # seconds a client has to send its request

    def log_message(self, format, *args):          # quiet: the command line says what it serves
        pass

    def _send(self, status, payload, kind="application/json; charset=utf-8"):
        data = payload if isinstance(payload, bytes) else \
            json.dumps(payload, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status, message):
        self._send(status, {"error": message})

    def _host_ok(self) -> bool:
        if not self.server.host_ok(self.headers.get("Host", "")):
            self._error(403, f"this server answers requests for {self.server.url} only")
            return False
        if self.headers.get("Sec-Fetch-Site", "") == "cross-site":
            self._error(403, "requests from another site's page are refused")
            return False
        return True

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in self.server.files:
            data, kind = self.server.files[path]
            return self._send(200, data, kind)
        if path == "/api/model":
            return self._send(*self.server.answer(path, {}))
        if path in ("/api/inspect", "/api/sample"):
            return self._error(405, f"{path} takes a POST with a JSON body")
        self._error(404, f"no such page: {path[:80]} (the inspector serves /, /api/model, "
                         f"/api/inspect and /api/sample)")

    def do_POST(self):
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/api/inspect", "/api/sample"):
            return self._error(404 if path not in self.server.files and path != "/api/model"
                               else 405, f"no POST route {path[:80]}")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._error(415, "a POST here carries JSON (Content-Type: application/json)")
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "a POST needs a Content-Length")
        if not 0 <= size <= MAX_BODY:
            return self._error(413, f"the request body is {size} bytes; the limit is {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return self._error(400, "the request body must be JSON")
        if not isinstance(body, dict):
            return self._error(400, "the request body must be a JSON object")
        try:
            return self._send(*self.server.answer(path, body))
        except (PromptError, ValueError, TypeError) as exc:
            return self._error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 -- said to the page and the console, not dropped
            print(f"scratchlm inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self._error(500, f"the inspection failed: {type(exc).__name__}: {exc}")

    def _refuse(self):
        self._error(405, f"{self.command} is not served here (GET and POST only)")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse


def export_page(result: dict, path) -> str:
    """Write a self-contained HTML page for one inspection (``result`` from
    :func:`~.analysis.inspect_prompt`): the style sheet, the script and the data inlined, nothing
    loaded from anywhere. Written to a temporary file and renamed into place. Returns the path."""
    page = static_file("index.html").decode()
    css = static_file("inspector.css").decode()
    js = static_file("inspector.js").decode()
    data = json.dumps(result, allow_nan=False).replace("<", "\\u003c")  # no "</script>" inside
    page = _swap(page, "STYLE", f"<style>\n{css}</style>")
    page = _swap(page, "DATA", f'<script type="application/json" id="inspector-data">{data}'
                               f"</script>")
    page = _swap(page, "SCRIPT", f"<script>\n{js.replace('</', '<' + chr(92) + '/')}</script>")
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)                          # a page to open and share (mkstemp: 0600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _swap(page, marker, text):
    start, end = f"<!--{marker}-->", f"<!--/{marker}-->"
    a, b = page.index(start), page.index(end) + len(end)
    return page[:a] + text + page[b:]
