"""Entry point of the packaged studio: the same CLI as `studio` (no arguments opens the window).

One extra command exists only here, to check a built package on a machine without a display:

    QT_QPA_PLATFORM=offscreen dist/studio/studio selftest [--screenshot shot.png] [--no-netron]

It loads the demo weights, converts and runs them in torch, onnxruntime (also INT8 quantization)
and onnx2torch, then opens the real window on the demo model, waits until the graph is drawn,
opens the Netron tab (QtWebEngine) until the page shows the graph, grabs a screenshot and quits.
It prints one line per check and exits 0 only if every check passed."""

import multiprocessing
import sys


def _check(name, fn, results):
    import time
    import traceback

    t0 = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # noqa: BLE001 - report and go on with the other checks
        detail = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        ok = False
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.1f} s){': ' + str(detail) if detail else ''}",
          flush=True)
    results.append(ok)


def _core_checks(results):
    import os
    import tempfile

    def zoo_weights():
        from studio.core import zoo

        m = zoo.load("cnn")
        return f"{m.name} from {zoo.RESOURCES}"

    def torch_and_onnxruntime():
        import numpy as np
        import onnxruntime as ort
        import torch

        from studio.core import zoo
        from studio.core.convert import to_onnx_proto

        m = zoo.load("cnn")
        x = m.example_input(4)
        with torch.no_grad():
            ref = m.obj(torch.from_numpy(x)).numpy()
        proto = to_onnx_proto(m)
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out = s.run(None, {s.get_inputs()[0].name: x})[0]
        assert np.allclose(out, ref, atol=1e-4), "onnxruntime differs from torch"
        return f"torch {torch.__version__}, onnxruntime {ort.__version__}"

    def int8_and_onnx2torch():
        from studio.core import zoo
        from studio.core.convert import to_onnx_proto
        from studio.core.model import ONNX
        from studio.core.passes.onnx_torch import onnx_to_torch

        m = zoo.load("cnn")
        onnx_model = m.with_obj(to_onnx_proto(m), ONNX, format="onnx")
        back = onnx_to_torch(onnx_model)  # checks its outputs against onnxruntime itself
        with tempfile.TemporaryDirectory() as d:
            from studio.cli import main

            out = os.path.join(d, "cnn-int8.onnx")
            rc = main(["export", "demo:cnn", "--format", "onnx_int8", "--data", "digits", "--out", out, "-q"])
            assert rc == 0 and os.path.getsize(out) > 0, f"export exited with {rc}"
        return f"onnx2torch -> {type(back.obj).__name__}; INT8 export verified"

    def netron_files():
        import netron

        folder = os.path.dirname(netron.__file__)
        assert os.path.isfile(os.path.join(folder, "index.html")), f"no index.html in {folder}"
        return f"netron {netron.__version__}"

    for name, fn in (("demo weights", zoo_weights), ("torch + onnxruntime", torch_and_onnxruntime),
                     ("INT8 + onnx2torch", int8_and_onnx2torch), ("netron files", netron_files)):
        _check(name, fn, results)


def _window_checks(results, screenshot, netron: bool):
    import json
    import os
    import tempfile
    import time

    os.environ.setdefault("STUDIO_SETTINGS", os.path.join(tempfile.mkdtemp(prefix="studio-selftest-"), "s.ini"))
    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    w = MainWindow(warm_up=True)
    w.show()

    def wait(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            app.processEvents()
            if cond():
                return True
            time.sleep(0.02)
        return False

    def window_on_demo():
        w.open_demo("cnn")
        assert wait(lambda: w.session.model is not None and w.graph_view.items, 120), "the demo never opened"
        return f"graph shows {len(w.graph_view.items)} nodes"

    def netron_tab():
        w.tabs.setCurrentWidget(w.netron_page)
        assert wait(lambda: w.netron is not None and w.netron.url is not None, 60), "netron never served"
        if w.netron.web is None:
            return "no QtWebEngine: system browser fallback"
        box = {}

        def drawn():
            w.netron.web.page().runJavaScript("document.body ? document.body.className : ''", 0,
                                              lambda r: box.__setitem__("cls", r))
            return "default" in str(box.get("cls", ""))

        assert wait(drawn, 90), f"netron page never drew the graph (body class {box.get('cls')!r})"
        return f"QtWebEngine page drew the graph at {w.netron.url}"

    _check("window on the demo model", window_on_demo, results)
    if netron and results[-1]:
        _check("Netron tab", netron_tab, results)
        w.tabs.setCurrentWidget(w.graph_view)
        wait(lambda: False, 0.5)
    if screenshot:
        _check("screenshot", lambda: w.grab().save(screenshot) and screenshot, results)
    w.shutdown()
    w.close()
    print(json.dumps({"passed": sum(results), "failed": len(results) - sum(results)}), flush=True)


def selftest(argv) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="studio selftest", description="check a built package (headless)")
    p.add_argument("--screenshot", help="save a picture of the window here")
    p.add_argument("--no-netron", action="store_true", help="skip the Netron (QtWebEngine) tab")
    p.add_argument("--no-window", action="store_true", help="core checks only")
    args = p.parse_args(argv)
    results: list[bool] = []
    _core_checks(results)
    if not args.no_window:
        _window_checks(results, args.screenshot, not args.no_netron)
    return 0 if all(results) else 1


if __name__ == "__main__":
    multiprocessing.freeze_support()
    if sys.argv[1:2] == ["selftest"]:
        sys.exit(selftest(sys.argv[2:]))
    from studio.cli import main

    sys.exit(main())
