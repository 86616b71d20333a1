"""The planted bugs of tools/mutants/ (make mutants) still fit the source: each snippet occurs
exactly once in its file and each bug names a test that exists, so that a refactor which
moves or rewrites a line fails here, loudly, instead of leaving a bug that plants nowhere."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "mutants"))
from mutants import FILES, MUTANTS  # noqa: E402


def test_mutant_names_are_unique():
    names = [m["name"] for m in MUTANTS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_each_planted_bug_matches_its_file_exactly_once(mutant):
    path = ROOT / FILES[mutant["file"]]
    assert path.is_file(), f"{mutant['name']}: {FILES[mutant['file']]} is gone; update FILES in tools/mutants/mutants.py"
    n = path.read_text().count(mutant["old"])
    assert n == 1, (f"{mutant['name']}: the snippet {mutant['old']!r} occurs {n} times in {FILES[mutant['file']]}; "
                    f"update it in tools/mutants/mutants.py so that it plants exactly one bug")
    assert mutant["new"] != mutant["old"]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_each_planted_bug_names_a_test_that_exists(mutant):
    for test in mutant["tests"]:
        path, _, name = test.partition("::")
        text = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        assert name and re.search(rf"^def {re.escape(name)}\(", text, re.M), \
            f"{mutant['name']}: the test {test} it names does not exist"
