"""The window's Results table shows the columns only some runs have (RAM, latency on ExecuTorch)
with the same cells as the text table and the HTML report (core/stage_table.py)."""

from studio.core import stage_table
from studio.core.evaluate import Measurement
from studio.core.pipeline import Run, Stage
from studio.core.recipe import Recipe


def measured_run() -> Run:
    base = Measurement(accuracy=0.98, parameters=1000, nonzeros=1000, size_bytes=4096, zip_bytes=4000,
                       latency_ms={1: 2.0}, runtime_ms={"pte": 1.5}, ram_bytes=3 * 2**20,
                       runtime_ram_bytes={"pte": 2 * 2**20}, samples=360)
    int8 = Measurement(accuracy=0.97, parameters=1000, nonzeros=1000, size_bytes=1024, zip_bytes=900,
                       latency_ms={1: 1.0}, ram_bytes=2**20, samples=360)
    return Run("r1", Recipe(), [Stage(0, "original", "0 original", None, measurement=base),
                                Stage(1, "quantize.int8_static", "1 quantize.int8_static", None, measurement=int8)],
               data_name="digits", runtimes=("ort", "pte"))


def test_results_table_adds_ram_and_executorch_columns_when_a_run_has_them(qtbot):
    from studio.qt.session import Session
    from studio.qt.views.results import COLUMNS, ResultsTable

    session = Session()
    table = ResultsTable(session)
    qtbot.addWidget(table)
    plain = Run("r0", Recipe(), [Stage(0, "original", "0 original", None,
                                       measurement=Measurement(accuracy=0.98, latency_ms={1: 2.0}))], data_name="digits")
    session.add_run(plain)
    assert table.model.columnCount() == len(COLUMNS)  # onnxruntime only: the fixed columns

    run = measured_run()
    session.add_run(run)
    heads = [table.model.horizontalHeaderItem(i).text() for i in range(table.model.columnCount())]
    assert heads[len(COLUMNS):] == ["RAM to run", "RAM to run, ExecuTorch (XNNPACK)", "ms, batch 1, ExecuTorch (XNNPACK)",
                                    "x faster, batch 1, ExecuTorch (XNNPACK)"]
    rows = stage_table.rows(run)
    for i, key in enumerate(["ram", "pte_ram", "pte_ms_1", "pte_x_1"]):
        column = len(COLUMNS) + i
        assert table.model.item(1, column).text() == rows[0][key].text  # rows: r0's stage, then r1's two
        assert table.model.item(2, column).text() == rows[1].get(key, stage_table.Cell(stage_table.NONE, 0)).text
        assert table.model.item(0, column).text() == stage_table.NONE  # the run that did not measure it
    assert table.model.item(1, len(COLUMNS) + 1).text() == "2.0 MiB"
    assert table.model.item(1, len(COLUMNS) + 2).text() == "1.500"
    assert table.model.item(2, len(COLUMNS) + 2).text() == stage_table.NONE


def test_the_chart_offers_executorch_latency_and_ram_once_a_run_measured_them(qtbot):
    from studio.qt.session import Session
    from studio.qt.views.tradeoff import TradeoffChart

    session = Session()
    chart = TradeoffChart(session)
    qtbot.addWidget(chart)
    assert chart.axis.findData("latency_pte_b1") < 0 and chart.axis.findData("ram_bytes") < 0
    session.add_run(measured_run())
    assert chart.axis.findData("latency_tflite_b1") < 0  # the run did not time LiteRT
    assert chart.axis.findData("zip_bytes") == chart.axis.currentIndex()  # the choice made stays
    chart.axis.setCurrentIndex(chart.axis.findData("latency_pte_b1"))
    assert [(x, idx) for x, _, _, idx, _ in chart.points] == [(1.5, 0)]  # the INT8 stage has no ExecuTorch number
    assert "ExecuTorch (XNNPACK), batch 1: 1.500 ms" in chart.points[0][4]
    assert chart.plot.getAxis("bottom").labelText == "Latency, batch 1, ExecuTorch XNNPACK (ms)"
    chart.axis.setCurrentIndex(chart.axis.findData("ram_bytes"))
    assert sorted(idx for _, _, _, idx, _ in chart.points) == [0, 1]
    assert chart.plot.getAxis("bottom").labelText == "RAM to run (MiB)"


def test_the_chart_offers_litert_latency_once_a_run_timed_it(qtbot):
    from studio.qt.session import Session
    from studio.qt.views.tradeoff import TradeoffChart

    session = Session()
    chart = TradeoffChart(session)
    qtbot.addWidget(chart)
    m = Measurement(accuracy=0.98, latency_ms={1: 2.0}, runtime_ms={"tflite": 0.8}, samples=360)
    session.add_run(Run("r2", Recipe(), [Stage(0, "original", "0 original", None, measurement=m)],
                        data_name="digits", runtimes=("ort", "tflite")))
    assert chart.axis.findData("latency_pte_b1") < 0
    chart.axis.setCurrentIndex(chart.axis.findData("latency_tflite_b1"))
    assert [x for x, *_ in chart.points] == [0.8]
    assert "LiteRT (XNNPACK), batch 1: 0.800 ms" in chart.points[0][4]
    assert chart.plot.getAxis("bottom").labelText == "Latency, batch 1, LiteRT XNNPACK (ms)"
