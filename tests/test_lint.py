"""The tree passes the linter configured in pyproject.toml ([tool.ruff]): one import order,
no unused imports or names, pycodestyle's errors and warnings. `ruff check --fix .` repairs
the import order and unused imports; it names the rest, file and line."""
import shutil
import subprocess
from pathlib import Path

import pytest

from minbert.exercises.regions import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> str | None:
    try:
        from ruff.__main__ import find_ruff_bin
        return find_ruff_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("ruff")


def test_the_tree_passes_ruff():
    if (ROOT / MANIFEST).exists():
        pytest.skip("a student copy: its stubs leave imports and names that the solutions use")
    exe = ruff()
    if exe is None:
        pytest.skip("ruff is not installed (pip install -r requirements.txt installs it)")
    done = subprocess.run([exe, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check . (pyproject.toml, [tool.ruff]) found:\n{done.stdout[-4000:]}"
