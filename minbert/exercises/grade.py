"""Grading: run the tests of some exercises in one pytest process and say, for each, whether
it is not started (its stub still raises ExerciseNotImplemented), failing or passing.

The results come back through pytest's JUnit XML; each test case is given to its exercises
by the registry's patterns (the same rule tests/conftest.py marks them by).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from minbert.exercises.regions import ROOT
from minbert.exercises.registry import EXERCISES, exercises_of, test_files, with_prerequisites

NOT_DONE = re.compile(r"ExerciseNotImplemented: exercise '(\w+)' is not done yet")


@dataclass
class TestResult:
    name: str  # "test_adamw.py::test_adamw_bias_correction[loop]"
    passed: bool
    message: str = ""  # first line of the failure
    details: str = ""  # the whole failure text
    not_done: tuple[str, ...] = ()  # exercises whose stub this test ran into


@dataclass
class ExerciseResult:
    id: str
    tests: list[TestResult] = field(default_factory=list)
    waits_for: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.tests)

    @property
    def state(self) -> str:
        if self.tests and self.passed == len(self.tests):
            return "passing"
        if any(self.id in t.not_done for t in self.tests):
            return "not started"
        return "failing"

    @property
    def first_failure(self) -> str:
        if not self.tests:
            return "no test of this exercise ran (see pytest's output above)"
        return next((f"{t.name.split('::')[1]}: {t.message}" for t in self.tests if not t.passed), "")


def run_pytest(ids, root: Path = ROOT, extra=()) -> tuple[list[TestResult], str]:
    """Runs the tests of these exercises in root; returns every test case and pytest's output."""
    files = [f"tests/{f}" for f in test_files(ids)]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "results.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
               "--tb=short", "-m", " or ".join(ids), f"--junitxml={xml}", "-o", "junit_logging=no", *extra, *files]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        if not xml.exists():
            return [], output
        results = []
        for case in ET.parse(xml).iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            if not module.startswith("test_"):
                continue  # a collection error: its message is in pytest's output
            if case.find("skipped") is not None:
                continue
            bad = case.find("failure")
            bad = case.find("error") if bad is None else bad
            text = "" if bad is None else f"{bad.get('message', '')}\n{bad.text or ''}"
            not_done = tuple(dict.fromkeys(NOT_DONE.findall(text)))
            message = ""
            if not_done:
                message = f"ExerciseNotImplemented: {', '.join(not_done)} not done yet"
            elif bad is not None:  # the first line, without pytest.fail's "Failed: "
                message = (bad.get("message") or bad.text or "").strip().split("\n")[0].removeprefix("Failed: ")
            results.append(TestResult(f"{module}.py::{case.get('name')}", bad is None, message, text, not_done))
        return results, output


def grade(ids=None, root: Path = ROOT) -> tuple[list[ExerciseResult], str]:
    """One result per asked exercise (default: all), with "waits for" filled in; the tests of
    what they build on run too, so that it can be."""
    asked = list(EXERCISES) if not ids else list(ids)
    unknown = [ex for ex in asked if ex not in EXERCISES]
    if unknown:
        raise ValueError(f"unknown exercise(s) {', '.join(unknown)}; known: {', '.join(EXERCISES)}")
    run = with_prerequisites(asked)
    tests, output = run_pytest(run, root)
    by_id = {ex: ExerciseResult(ex) for ex in run}
    for t in tests:
        file, _, name = t.name.partition("::")
        for ex in exercises_of(file, name):
            if ex in by_id:
                by_id[ex].tests.append(t)
    for r in by_id.values():
        needs = [dep for dep in EXERCISES[r.id].builds_on if by_id[dep].state != "passing"]
        needs += [ex for t in r.tests for ex in t.not_done if ex != r.id]  # stubs its tests ran into
        r.waits_for = list(dict.fromkeys(needs))
    return [by_id[ex] for ex in asked], output


def table(results: list[ExerciseResult]) -> str:
    rows = [("exercise", "state", "tests", "first failure")]
    for r in results:
        state = r.state + (f", waits for {', '.join(r.waits_for)}" if r.waits_for else "")
        failure = r.first_failure
        rows.append((r.id + (" (advanced)" if EXERCISES[r.id].advanced else ""), state,
                     f"{r.passed}/{len(r.tests)}", failure if len(failure) <= 110 else failure[:107] + "..."))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def gradescope(results: list[ExerciseResult], seconds: float) -> dict:
    """Gradescope's results.json: one entry per exercise, a point per passing test."""
    tests = []
    for r in results:
        e = EXERCISES[r.id]
        lines = [f"{r.state}: {r.passed}/{len(r.tests)} tests pass ({e.where}; {e.paper})"]
        if r.waits_for:
            lines.append(f"waits for {', '.join(r.waits_for)}")
        lines += [f"FAILED {t.name}: {t.message}" for t in r.tests if not t.passed]
        tests.append({"name": f"{r.id}: {e.where}", "score": r.passed, "max_score": len(r.tests),
                      "output": "\n".join(lines), "visibility": "visible"})
    return {"score": sum(t["score"] for t in tests), "execution_time": round(seconds, 1), "tests": tests}


def check(ids=None, json_path=None, root: Path = ROOT, out=sys.stdout) -> int:
    """The `check` command: prints the table (and writes results.json); 0 when all pass."""
    start = time.perf_counter()
    results, output = grade(ids, root)
    seconds = time.perf_counter() - start
    if any(not r.tests for r in results):
        print(output[-4000:], file=out)
    print(table(results), file=out)
    print(f"({seconds:.1f} s)", file=out)
    if json_path:
        Path(json_path).write_text(json.dumps(gradescope(results, seconds), indent=2) + "\n")
    return 0 if all(r.state == "passing" for r in results) else 1
