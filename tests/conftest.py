"""Shared paths for the tests. The real weights and data live outside the project, in
../shared (or where MINBERT_SHARED points); tests that need them skip with a reason."""
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(os.environ.get("MINBERT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MINILM = Path(os.environ.get("MINBERT_MINILM", SHARED / "models" / "all-MiniLM-L6-v2"))


def need(path: Path, what: str):
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set MINBERT_SHARED or MINBERT_MINILM to its location)")
    return path


@pytest.fixture
def minilm_dir():
    return need(MINILM, "all-MiniLM-L6-v2 weights")
