"""The stage table is built once (core/stage_table.py): the command line's text and the HTML
report show the same cells, ratios against the original, and say what the quality is."""

import re

from studio.core import stage_table
from studio.core.evaluate import Measurement
from studio.core.pipeline import Run, Stage
from studio.core.recipe import Recipe
from studio.core.report import stage_rows


def small_run() -> Run:
    base = Measurement(accuracy=0.98, parameters=1000, nonzeros=1000, size_bytes=4096, zip_bytes=4000, macs=5000,
                       latency_ms={1: 2.0, 32: 40.0}, samples=360)
    pruned = Measurement(accuracy=0.975, parameters=1000, nonzeros=100, size_bytes=4096, zip_bytes=1000, macs=5000,
                         latency_ms={1: 1.0, 32: 50.0}, samples=360)
    stages = [Stage(0, "original", "0 original", None, measurement=base),
              Stage(1, "prune.magnitude", "1 prune.magnitude", None, measurement=pruned, warnings=["1.25x slower"]),
              Stage(2, "quantize.fp16", "2 quantize.fp16", None)]
    return Run("r1", Recipe(), stages, data_name="digits")


def test_the_text_table_and_the_html_show_the_same_cells():
    run = small_run()
    text = stage_table.text(run)
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "accuracy", "params", "nonzero", "file", "zipped", "x", "zip", "MACs",
                                "ms", "b1", "x", "ms", "b32", "x"]
    row = lines[3]
    assert row.startswith("1 prune.magnitude")
    for cell in ["97.50%", "1,000", "100", "4.0 KiB", "1000 B", "4.0x", "5,000", "1.000", "2.00x", "50.000", "0.80x"]:
        assert f" {cell}" in row, cell
    assert lines[4] == "2 quantize.fp16" + " " * 14 + "(not measured)"
    assert "accuracy: top-1 accuracy on the labelled held-out split" in text
    assert "quality on 360 held-out samples of 'digits'" in text
    assert "warning: stage 1 prune.magnitude: 1.25x slower" in text

    html = stage_rows(run)
    heads = re.findall(r"<th>([^<]*)</th>", html.split("</table>")[0])
    assert heads[:3] == ["stage", "accuracy", "parameters"] and heads[-1] == "x faster, batch 32"
    html_rows = re.findall(r"<tr>(<td>.*?)</tr>", html.split("</table>")[0])
    assert len(html_rows) == 2  # the unmeasured stage has no numbers to show
    cells = re.findall(r"<td>([^<]*)</td>", html_rows[1])
    assert cells == [stage_table.rows(run)[1][c.key].text for c in stage_table.columns(run)]
    where = 0
    for cell in cells:  # the text row holds the same cells, in the same order
        where = row.index(cell, where) + len(cell)
