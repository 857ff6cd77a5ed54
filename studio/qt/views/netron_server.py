"""A loopback HTTP server that shows one model file in netron, readable only by the studio.

netron.serve() answers any Host header on a guessable path, so a DNS-rebinding web page or
another local user who finds the port could read the open model. This server reuses netron's
own request handler (it serves netron's static files and injects the model's <meta> tags),
but a request is answered only when
- its Host header is 127.0.0.1:<port> or localhost:<port> (else 403: rebinding), and
- its path starts with /<token>/, a secrets.token_urlsafe token (else 404).
netron's pages load everything by paths relative to the page, so under /<token>/ they still work.
Qt-free: testable with plain http.client."""

from __future__ import annotations

import hmac
import http.server
import secrets
import threading
import urllib.parse
from pathlib import Path


def _handler_base():
    # netron.serve() hard-codes its handler class, so we subclass it (netron >= 9, pinned 9.3.3)
    from netron import server

    return server._HTTPRequestHandler, server._ContentProvider


class ModelServer:
    """Serves `path` (and netron's page) at self.url until stop()."""

    def __init__(self, path: str | Path):
        base, provider = _handler_base()
        path = str(path)
        token = secrets.token_urlsafe(32)

        class Handler(base):
            content = provider(None, path, path, path)  # per server: netron's is a class attribute

            def do_GET(self):
                port = self.server.server_address[1]
                if self.headers.get("Host", "") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
                    self.send_error(403, "Forbidden host")
                    return
                parts = urllib.parse.urlsplit(self.path).path.split("/", 2)
                if len(parts) < 3 or not hmac.compare_digest(parts[1].encode(), token.encode()):
                    self.send_error(404)
                    return
                self.path = "/" + parts[2]  # netron's handler sees the page as if served at /
                try:
                    super().do_GET()
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the page went away mid-answer (a tab closed, a test ended): nothing to do

            def log_message(self, format, *args):  # quiet; netron's own one breaks on send_error
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.block_on_close = False  # close never waits for a slow client
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}/{token}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="netron-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
