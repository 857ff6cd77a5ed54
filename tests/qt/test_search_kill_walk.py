"""The issue's "Done when" walk, for real: a search started from the Search tab of the real main
window in a child process, points landing on its chart, the child killed with SIGKILL; then a
new window pointed at the same folder starts the search again, and every earlier point is on
its chart before any new one lands, and none of them was measured again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]

# the child: the window as a user has it, driven through its own widgets; each point that lands
# on the chart is written to LOG (one line: the trial number), then it waits to be killed
CHILD = r"""
import sys, time
from pathlib import Path

model, folder, log = sys.argv[1:4]
from studio.qt.app import create_app

app = create_app()
from studio.qt.main_window import MainWindow

w = MainWindow()
w.show()
view = w.search_view


def wait(condition, seconds):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        app.processEvents()
        time.sleep(0.01)


w.open_path(model)
wait(lambda: w.session.model is not None and not w.tasks.running("load"), 120)
view.out.setText(folder)
view.quick.setChecked(True)
view.max_drop.setValue(100.0)
view.seconds.setValue(900)
out = open(log, "a")
landed = view.add_candidate


def record(c):
    landed(c)
    out.write(f"{c['trial']} {len(view.scatter.points())}\n")
    out.flush()


view.add_candidate = record
view.run_button.click()
if view.error.text():
    out.write("error " + view.error.text() + "\n")
    out.flush()
while True:
    app.processEvents()
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_search_in_the_window_killed_and_started_again_keeps_every_point(window, qtbot, tmp_path, tiny_model):
    folder, log = tmp_path / "search", tmp_path / "landed.txt"
    log.write_text("")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "STUDIO_SETTINGS": str(tmp_path / "child.ini"),
           "STUDIO_CACHE": os.environ.get("STUDIO_CACHE", str(tmp_path / "cache"))}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_model), str(folder), str(log)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(log.read_text().splitlines()) < 3:
            assert "error" not in log.read_text(), log.read_text()
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no three points on the child's chart within 240 s"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
    lines = [line.split() for line in log.read_text().splitlines()]
    on_chart = [int(trial) for trial, _ in lines]
    assert [int(n) for _, n in lines] == list(range(1, len(lines) + 1))  # each a new point on the child's chart

    storage = f"sqlite:///{folder / 'search.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    done = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert set(on_chart) <= done
    files = {p: p.stat().st_mtime_ns for p in folder.glob("candidates/*/*")}
    keys = {t.user_attrs["key"] for t in study.trials if t.number in done}
    confirmed_before = {k: v for k, v in study.user_attrs.items() if k.startswith("confirmed-held-out:")}
    assert confirmed_before  # the first point is on the front: confirmed as it landed, kept in the store

    # a new window, the same folder: Start again
    w, view = window, window.search_view
    w.open_path(str(tiny_model))
    qtbot.waitUntil(lambda: w.session.model is not None and not w.tasks.running("load"), timeout=60_000)
    view.out.setText(str(folder))
    view.quick.setChecked(True)
    view.max_drop.setValue(100.0)
    view.trials.setValue(len(done) + 2)  # two new candidates (a trial the kill interrupted runs again)
    updates = []
    earlier, landed = view.add_candidates, view.add_candidate
    view.add_candidates = lambda cs: (updates.append(("earlier", [c["trial"] for c in cs],
                                                      len(view.scatter.points()))), earlier(cs))
    view.add_candidate = lambda c: (updates.append(("new", c["trial"], c["reused"], c["key"])), landed(c))
    view.run_button.click()
    assert view.cancel_button.isEnabled(), view.error.text()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=240_000)
    assert view.error.text() == "", view.error.text()

    assert updates[0][0] == "earlier", updates  # the earlier points first, in one go, on an empty chart
    assert sorted(updates[0][1]) == sorted(done) and updates[0][2] == 0
    new = [u for u in updates[1:] if u[0] == "new"]
    assert len(new) == 2 and all(u[1] > max(done) for u in new)  # then only new trials
    # measured now; or, when the kill fell between writing a candidate and telling Optuna, read back
    assert all(not u[2] or (folder / "candidates" / u[3] / "result.json") in files for u in new)
    assert len(view.scatter.points()) == len(done) + 2
    assert {c["trial"] for c in view.candidates} == done | {u[1] for u in new}

    # none measured again: the earlier candidates' files untouched, their confirmations kept
    for path, mtime in files.items():
        assert path.stat().st_mtime_ns == mtime, path
    summary = json.loads((folder / "search.json").read_text())
    assert summary["measured_this_run"] + summary["reused_this_run"] == 2
    assert summary["confirmed_this_run"] <= 2  # at most the new ones: no earlier confirmation measured again
    assert keys <= {c["key"] for c in summary["candidates"]}
    after = optuna.load_study(study_name=name, storage=storage).user_attrs
    assert all(after[k] == v for k, v in confirmed_before.items())
    assert summary["held_out"]["rule"] == "train-validation-v2" and summary["best"]["confirmed"] and summary["best"]["verified"]
    assert "confirmed" in view.summary.text()
