"""Runs inside a student copy, for tests/test_exercises.py (one process: torch loads once).

    PYTHONDONTWRITEBYTECODE=1 python tests/exercise_kit_driver.py SOLUTION_ROOT OUT.json

Writes to OUT.json: which minbert it imported; the exit code and output of
`train_multitask.py --help`; the outcome of every test of GREEN (code the exercises leave
alone, with every stub in place); and, for each stubbed exercise, the outcome of its tests
with only its solution put back (its regions of SOLUTION_ROOT rendered into the copy, then
stubbed again). Between runs every minbert and test module is dropped from sys.modules, so
each pytest.main imports the files as they now are (no bytecode is written: a rewrite within
one second would not be seen by a .pyc).
"""
import contextlib
import io
import json
import runpy
import sys
import time
from pathlib import Path

import pytest

COPY = Path(__file__).resolve().parents[1]
# Tokenizer, data files, metrics, the seed grid's statistics and the start-many-stop-early
# search: what a student runs beside the exercises, each importing the stubbed package.
GREEN = ["tests/test_tokenizer.py", "tests/test_metrics.py", "tests/test_seed_grid.py", "tests/test_data.py",
         "tests/test_seeds.py", "-k", "not write_grid_report and not "
         "write_report and not expected_max and not full_training_baseline and not prepare_script"]


SECONDS = {}


class Outcomes:
    def __init__(self):
        self.seen = {}

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.seen[report.nodeid] = ["failed", str(report.longrepr)[-1500:]]
        elif report.when == "call" or report.skipped:
            self.seen.setdefault(report.nodeid, ["passed" if report.passed else "skipped", ""])


def run(args) -> dict:
    for name in list(sys.modules):
        if name in ("minbert", "conftest") or name.startswith(("minbert.", "test_")):
            del sys.modules[name]
    outcomes, start = Outcomes(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--tb=short", *args], plugins=[outcomes])
    SECONDS[" ".join(args)[:60]] = round(time.process_time() - start, 2)  # CPU seconds of this run
    return outcomes.seen


def main(solution: Path, out: Path):
    sys.path.insert(0, str(COPY))
    import minbert
    result = {"minbert": minbert.__file__}
    sys.argv, buf, code = ["train_multitask.py", "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(str(COPY / "train_multitask.py"), run_name="__main__")
        except SystemExit as e:
            code = e.code
    result["help"] = {"code": code, "output": buf.getvalue()}
    result["green"] = run(GREEN)

    from minbert.exercises.regions import MANIFEST, find_regions, render
    from minbert.exercises.registry import EXERCISES, test_files
    stubbed = set(json.loads((COPY / MANIFEST).read_text())["stubbed"])
    result["restored"] = {}
    for ex in EXERCISES:
        if ex not in stubbed:
            continue
        f = EXERCISES[ex].file
        text = (solution / f).read_text()
        regions = find_regions(text, f)
        (COPY / f).write_text(render(text, regions, stubbed - {ex}))
        try:
            result["restored"][ex] = run(["-m", ex, *[f"tests/{t}" for t in test_files([ex])]])
        finally:
            (COPY / f).write_text(render(text, regions, stubbed))
    result["cpu_seconds"] = SECONDS
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
