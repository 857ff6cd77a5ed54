"""Netron in a tab. The shown variant is written as an ONNX file in a temp folder and served
with netron's page at http://127.0.0.1:<free port>/<secret token>/, answering only a loopback
Host (netron_server.py); a QWebEngineView shows it, created only when the tab is first opened.
Offline and pinned, two things in netron's browser.js would stop it:
- a cookie banner waits for consent: we set the cookie consent=1 for the origin first;
- a page whose build date is > 180 days old loops on "Please update to the newest version".
  The date comes from <meta name="date">; a user script that runs before the page's scripts
  hides that one meta tag, so browser.js falls back to "now" and the check can never fire.
Without QtWebEngine, a button opens the same URL in the system browser."""

from __future__ import annotations

import tempfile
import threading
import webbrowser
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .netron_server import ModelServer

# runs at DocumentCreation in the page's main world, before any of netron's scripts
NETRON_GUARD_JS = r"""
(function () {
  document.cookie = 'consent=' + Date.now() + ';path=/';
  const original = Document.prototype.getElementsByTagName;
  Document.prototype.getElementsByTagName = function (name) {
    const found = original.call(this, name);
    if (String(name).toLowerCase() !== 'meta') { return found; }
    return Array.from(found).filter((m) => m.name !== 'date');
  };
  window.__studioNetronGuard = true;
})();
"""


GUARD_NAME = "studio-netron-guard"


def webengine_available() -> bool:
    try:
        import PySide6.QtWebEngineWidgets  # noqa: F401
    except ImportError:
        return False
    return True


def serve_model(variant, folder: Path) -> tuple[ModelServer, str]:
    """Write the variant as ONNX and serve it; returns (server, file). Worker-thread work."""
    import onnx

    model = variant.model
    name = f"{model.name}-{variant.run_id or 'original'}-{variant.index}.onnx".replace(" ", "_")
    path = folder / name
    if model.framework == "onnx":
        proto = model.obj
    else:
        from studio.core.convert import to_onnx_proto

        proto = to_onnx_proto(model)
    onnx.save_model(proto, str(path))
    return ModelServer(path), str(path)


class NetronView(QWidget):
    def __init__(self, tasks, parent=None):
        """tasks: the job runner (workers.Tasks) that writes and serves the model file."""
        super().__init__(parent)
        self.tasks = tasks
        self.folder = tempfile.TemporaryDirectory(prefix="studio-netron-")
        self.url: str | None = None
        self.server: ModelServer | None = None
        self._servers: list[ModelServer] = []  # every one started and not yet stopped
        self._servers_lock = threading.Lock()
        self.info = QLabel("")
        self.browser_button = QPushButton("Open in the system browser")
        self.browser_button.clicked.connect(lambda: self.url and webbrowser.open(self.url))
        bar = QHBoxLayout()
        bar.addWidget(self.info, 1)
        bar.addWidget(self.browser_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        self.web = None
        if webengine_available():
            self.web = self._make_web_view()
            lay.addWidget(self.web, 1)
        else:
            self.info.setText("QtWebEngine is not installed: Netron opens in the system browser.")
        self.shown_key = None

    def _make_web_view(self):
        from PySide6.QtNetwork import QNetworkCookie
        from PySide6.QtWebEngineCore import QWebEngineProfile, QWebEngineScript
        from PySide6.QtWebEngineWidgets import QWebEngineView

        from PySide6.QtCore import QCoreApplication

        # off the record (nothing lands on disk); owned by the application so it outlives its pages
        self.profile = QWebEngineProfile(QCoreApplication.instance())
        script = QWebEngineScript()
        script.setName(GUARD_NAME)
        script.setSourceCode(NETRON_GUARD_JS)
        script.setInjectionPoint(QWebEngineScript.DocumentCreation)
        script.setWorldId(QWebEngineScript.MainWorld)
        script.setRunsOnSubFrames(False)
        self.profile.scripts().insert(script)
        self._cookie = QNetworkCookie
        from PySide6.QtWebEngineCore import QWebEnginePage

        view = QWebEngineView(self)
        view.setPage(QWebEnginePage(self.profile, view))
        return view

    def show_variant(self, variant) -> None:
        if variant is None or variant.key == self.shown_key and self.url:
            return
        self.shown_key = variant.key
        self.info.setText("preparing Netron…")
        self.tasks.start("netron", self._serve, variant, on_return=self._served,
                         on_error=lambda e: self.info.setText(f"Netron: {e}"))

    def _serve(self, variant):
        self._stop_servers()  # the previous variant is no longer served
        server, path = serve_model(variant, Path(self.folder.name))
        with self._servers_lock:
            self._servers.append(server)
        return server, path

    def _served(self, value) -> None:
        self.server, path = value
        self._stop_servers(keep=self.server)  # one a stale worker started, whose result was dropped
        import netron

        url = self.url = self.server.url
        qurl = QUrl(url)
        where = f"{qurl.host()}:{qurl.port()}"  # not the secret path
        self.info.setText(f"{Path(path).name} served by netron {netron.__version__} on {where}")
        if self.web is None:
            webbrowser.open(url)
            return
        cookie = self._cookie(b"consent", b"1")
        cookie.setPath("/")
        self.profile.cookieStore().setCookie(cookie, qurl)
        self.web.setUrl(qurl)

    def _stop_servers(self, keep=None) -> None:
        with self._servers_lock:
            gone = [s for s in self._servers if s is not keep]
            self._servers = [s for s in self._servers if s is keep]
        for server in gone:
            server.stop()

    def stop(self) -> None:
        self._stop_servers()
        self.server = None
        if self.web is not None:
            self.web.setUrl(QUrl("about:blank"))
            self.web.page().deleteLater()  # pages go before their profile
