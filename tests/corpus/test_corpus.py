"""The model corpus (tests/corpus/models.py) in every form through `inspect` and every pass,
against expected.yaml. A changed cell fails with a line naming it: a fix that turns a refusal
into `ok` is a cell to update (`python -m tests.corpus.table --update`, then review the diff)."""

from __future__ import annotations

import pytest

from studio.core.passes import all_passes
from tests.corpus import table
from tests.corpus.models import cases


def test_expected_table_covers_the_corpus_and_names_reasons():
    """expected.yaml has a row for every model and form, a cell for inspect and every registered
    pass, no `bug` cell, and refusals that read as reasons (no exception class, no traceback)."""
    expected = table.load_expected()
    assert set(expected) == set(cases())
    passes = set(all_passes())
    for name, case in cases().items():
        assert set(expected[name]) == set(case.forms), name
        for form, cells in expected[name].items():
            assert {"inspect"} | passes <= set(cells), f"{name}/{form}: missing {({'inspect'} | passes) - set(cells)}"
            for cell, value in cells.items():
                kind, _, text = value.partition(": ")
                assert kind in ("ok", "refused", "xfail") or value == "ok", f"{name}/{form}/{cell}: {value}"
                if kind == "refused":
                    assert text and not table.INTERNAL.search(text), f"{name}/{form}/{cell}: {value}"
                if kind == "xfail":
                    assert len(text) > 10, f"{name}/{form}/{cell}: an xfail needs its reason"


# The whole table is one test: 7 min of CPU (9.8 min beside three other jobs), past pytest-timeout's 300 s default
# beside another xdist worker (a CI run lost its worker to it). A hung cell is ended after
# CELL_SECONDS by table.Worker, so this limit only bounds the sum.
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_corpus_table_matches(capsys):
    expected = table.load_expected()
    actual = table.run_table(skip=table.known_hangs(expected))
    diffs = table.differences(expected, actual)
    with capsys.disabled():
        print("\n" + table.count_text(table.with_xfails(expected, actual)))
    assert not diffs, ("cells changed (python -m tests.corpus.table --update rewrites expected.yaml):\n"
                       + "\n".join(diffs))
