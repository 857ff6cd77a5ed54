"""The shape holds: the import-linter contracts in pyproject.toml (the core never imports Qt; each
layer imports only those below it), ruff's rules and mypy's error count, each run for real."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MYPY_BASELINE = ROOT / "tests" / "mypy-baseline.txt"


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN))
    assert path, f"{name} is not installed (pip install -e .[test])"
    return path


def test_import_contracts_hold():
    result = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_ruff_finds_nothing():
    result = subprocess.run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff (rules in pyproject.toml; `ruff check --fix` fixes some):\n{result.stdout}"


@pytest.mark.slow
def test_mypy_errors_only_go_down(tmp_path):
    """mypy over studio/ (settings in pyproject.toml) finds at most the committed number of errors.
    Fewer is welcome: lower the number in tests/mypy-baseline.txt so it cannot creep back."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    found = re.search(r"Found (\d+) errors? in", result.stdout)
    count = int(found.group(1)) if found else 0
    assert found or "Success: no issues found" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    baseline = int(MYPY_BASELINE.read_text().split()[0])
    new = "\n".join(result.stdout.splitlines()[-30:])
    assert count <= baseline, f"mypy found {count} errors, the baseline allows {baseline}; the last ones:\n{new}"
