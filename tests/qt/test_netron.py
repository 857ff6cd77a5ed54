"""The Netron tab really shows the model, offline, as root, and whatever the clock says."""

import json

import pytest
from PySide6.QtCore import QUrl

pytest.importorskip("PySide6.QtWebEngineWidgets")

# moves the page's clock 400 days ahead: netron 9.3.3's own build date is then > 180 days old
FAKE_CLOCK_JS = """
(function () {
  const Real = Date, shift = 400 * 864e5;
  class Later extends Real {
    constructor(...a) { if (a.length === 0) { super(Real.now() + shift); } else { super(...a); } }
    static now() { return Real.now() + shift; }
  }
  window.Date = Later;
})();
"""


def page_state(view, qtbot, wanted, timeout=60_000):
    """Poll the page until wanted(state) holds; state = body class and netron's message text."""
    box = {}

    def poll():
        view.page().runJavaScript(
            "JSON.stringify([document.body ? document.body.className : '', "
            "(document.getElementById('message-text') || {}).innerText || ''])", 0,
            lambda r: box.__setitem__("state", json.loads(r) if r else None))
        return bool(box.get("state")) and wanted(box["state"])

    qtbot.waitUntil(poll, timeout=timeout)
    return box["state"]


def add_script(profile, name, source):
    from PySide6.QtWebEngineCore import QWebEngineScript

    s = QWebEngineScript()
    s.setName(name)
    s.setSourceCode(source)
    s.setInjectionPoint(QWebEngineScript.DocumentCreation)
    s.setWorldId(QWebEngineScript.MainWorld)
    profile.scripts().insert(s)


def test_netron_tab_survives_an_old_build_date(demo, qtbot):
    w = demo
    assert w.netron is None  # never created at start-up
    w.tabs.setCurrentWidget(w.netron_page)
    assert w.netron is not None
    qtbot.waitUntil(lambda: w.netron.url is not None, timeout=60_000)
    view, profile = w.netron.web, w.netron.profile
    assert len(QUrl(w.netron.url).path()) > 40  # served under a secret token (test_netron_server.py)
    # today: the model is drawn (netron's body class becomes 'default' once a graph is shown)
    cls, _ = page_state(view, qtbot, lambda s: "default" in s[0])

    # half a year later (simulated): still drawn, no "Please update" loop
    add_script(profile, "fake-clock", FAKE_CLOCK_JS)
    view.setUrl(QUrl(w.netron.url + "?later"))
    cls, message = page_state(view, qtbot, lambda s: "default" in s[0] or "update" in s[1].lower())
    assert "default" in cls and "update" not in message.lower()

    # control: without the studio's guard the same clock does break netron, so the check above can fail
    from studio.qt.views.netron_view import GUARD_NAME

    for script in profile.scripts().find(GUARD_NAME):
        profile.scripts().remove(script)
    view.setUrl(QUrl(w.netron.url + "?unguarded"))
    _, message = page_state(view, qtbot, lambda s: "update" in s[1].lower())
    assert "Please update" in message
