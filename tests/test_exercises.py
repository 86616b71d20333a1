"""The course kit (minbert/exercises, docs/TEACHING.md), checked from both sides: the
markers and the registry agree with the code; the student copy keeps everything but the
solution; in the copy every exercise is not started while the rest stays green; each
exercise's solution, put back alone, passes its tests; the stored references regenerate.

One copy is graded by `python -m minbert.exercises check` and a second is driven by
tests/exercise_kit_driver.py, the two processes side by side (module-scoped fixture `kit`).
The solution passing every exercise's tests is the rest of this suite: they carry markers.
"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES
from minbert.exercises import EXERCISES
from minbert.exercises.regions import IMPORT, MANIFEST, MarkerError, find_regions, make, scan, source_files, stub
from minbert.exercises.registry import TOUR, name_pattern

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / MANIFEST).exists():
    pytest.skip("a student copy: these tests check the solution it was made from", allow_module_level=True)


def test_every_exercise_has_regions_in_the_functions_the_registry_names():
    regions = [r for rs in scan(ROOT).values() for r in rs]
    for e in EXERCISES.values():
        marked = {r.function for r in regions if r.id == e.id}
        assert marked == set(e.functions), (
            f"exercise {e.id!r}: the registry names {sorted(e.functions)} in {e.file}, regions are in {sorted(marked)}")


def marked(*lines):
    """A small module whose lines are given with '>' for the comment sign of a marker line."""
    return "\n".join(["class BertSelfAttention:", "    def forward(self, x):"]
                     + ["        " + line.replace(">", "#") for line in lines]) + "\n"


@pytest.mark.parametrize("text, fault", [
    (marked("> BEGIN EXERCISE attention", "return x"), "is never closed"),
    (marked("return x", "> END EXERCISE attention"), "without a BEGIN"),
    (marked("> BEGIN EXERCISE attention", "> BEGIN EXERCISE attention", "return x", "> END EXERCISE attention",
            "> END EXERCISE attention"), "regions do not nest"),
    (marked("> BEGIN EXERCISE attention", "return x", "> END EXERCISE layer"), "closes the region 'attention'"),
    (marked("> BEGIN EXERCISE attn", "return x", "> END EXERCISE attn"), "'attn' is not in the registry"),
    (marked(">BEGIN EXERCISE: attention", "return x"), "malformed exercise marker"),
    (marked("> BEGIN EXERCISE embeddings", "return x", "> END EXERCISE embeddings"), "the registry puts it in"),
])
def test_marker_faults_fail_naming_file_and_line(text, fault):
    with pytest.raises(MarkerError, match=re.escape(fault)) as e:
        find_regions(text, "minbert/model.py")
    assert str(e.value).startswith("minbert/model.py:"), str(e.value)


def test_registry_names_real_sections_tests_and_prerequisites(request):
    headings = [line[3:] for line in (ROOT / TOUR).read_text().splitlines() if line.startswith("## ")]
    markers = " ".join(request.config.getini("markers"))
    for e in EXERCISES.values():
        assert any(h.startswith(e.section) for h in headings), f"{e.id}: {TOUR} has no section {e.section!r}"
        assert set(e.builds_on) <= set(EXERCISES) - {e.id}, f"{e.id}: builds on unknown {e.builds_on}"
        assert e.paper and e.equation and e.tests, f"{e.id}: paper, equation and tests are all needed"
        assert f"{e.id}: " in markers, f"marker {e.id!r} is not registered (tests/conftest.py)"
        for pattern in e.tests:
            file, _, name = pattern.partition("::")
            names = [n.name for n in ast.walk(ast.parse((ROOT / "tests" / file).read_text()))
                     if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
            bare = name_pattern(name.split("[")[0])  # a test function, any parametrization
            assert any(bare.match(n) for n in names), f"{e.id}: no test in tests/{file} matches {pattern!r}"


# ---------------------------------------------------------------- the student copy

@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Two copies, graded and driven side by side; returns (copy, check's output, check's
    exit code, results.json, the driver's results)."""
    graded, driven = tmp_path_factory.mktemp("kit") / "student", tmp_path_factory.mktemp("kit") / "student"
    make(graded)
    make(driven)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")  # two processes, two cores
    out = graded.parent / "driver.json"
    check = subprocess.Popen([sys.executable, "-m", "minbert.exercises", "check", "--json", "results.json"],
                             cwd=graded, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = subprocess.run([sys.executable, "tests/exercise_kit_driver.py", str(ROOT), str(out)],
                            cwd=driven, env=env, capture_output=True, text=True)
    table = check.communicate()[0]
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    return graded, table, check.returncode, json.loads((graded / "results.json").read_text()), json.loads(out.read_text())


def test_copy_keeps_everything_but_the_solution(kit):
    copy = kit[0]
    assert not (copy / ".git").exists() and not (copy / "runs").exists() and not (copy / ".venv").exists()
    regions = scan(ROOT)
    for f in source_files(ROOT):
        if f not in regions:
            assert (copy / f).read_bytes() == (ROOT / f).read_bytes(), f"{f} differs in the copy"
            continue
        solution = (ROOT / f).read_text().splitlines(keepends=True)
        inside = {i for r in regions[f] for i in range(r.begin, r.end + 1)}
        kept = [line for i, line in enumerate(solution) if i not in inside]
        stubs = {line for r in regions[f] for line in stub(r)}
        written = (copy / f).read_text().splitlines(keepends=True)
        assert [line for line in written if line not in stubs and line != IMPORT] == kept, (
            f"{f}: outside its exercise regions the copy must equal the solution")
        outside = {line.strip() for line in kept}
        left = {line.strip() for line in written} & {solution[i].strip() for i in inside} - outside
        assert not left, f"{f}: solution lines left in the copy: {sorted(left)}"
        for r in regions[f]:
            e = EXERCISES[r.id]
            assert "".join(stub(r)) in "".join(written) and e.equation in stub(r)[1] and e.section in stub(r)[0]


def test_copy_imports_and_train_help_runs(kit):
    copy, *_, driver = kit
    assert Path(driver["minbert"]).parent.parent.name == "student", f"the copy imported {driver['minbert']}"
    assert driver["help"]["code"] == 0 and "--preset" in driver["help"]["output"], driver["help"]


def test_copy_check_says_every_exercise_is_not_started(kit):
    _, table, code, results, _ = kit
    assert code == 1, f"check must exit 1 while exercises fail:\n{table}"
    for ex in EXERCISES:
        row = next((line for line in table.splitlines() if line.startswith(ex + " ")), None)
        assert row and re.search(r"\bnot started\b.*\s0/\d+\s", row), f"{ex}: {row!r}\n{table}"
    assert results["score"] == 0 and len(results["tests"]) == len(EXERCISES)
    for t in results["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output"} and t["max_score"] > 0, t
        assert t["output"].startswith("not started"), t


def test_copy_tests_outside_the_exercises_stay_green(kit):
    green = kit[-1]["green"]
    failed = {k: v[1][-400:] for k, v in green.items() if v[0] == "failed"}
    assert not failed, f"in the student copy, tests outside the exercises failed: {failed}"
    assert sum(v[0] == "passed" for v in green.values()) >= 50, green
    # a test of no exercise that needs a stub (the tokenizer's model call needs the encoder) is
    # skipped naming the exercise it waits for (tests/conftest.py), not failed
    waits = [k for k, v in green.items() if "hugging_face_style_calls" in k]
    assert waits and all(green[k][0] == "skipped" for k in waits), {k: green[k] for k in waits}


@pytest.mark.parametrize("ex", list(EXERCISES))
def test_putting_back_one_solution_passes_its_tests(kit, ex):
    outcomes = kit[-1]["restored"][ex]
    failed = {k: v[1][-600:] for k, v in outcomes.items() if v[0] == "failed"}
    assert outcomes and not failed, f"with only {ex!r} put back in the copy, its tests failed: {failed}"


def test_reference_outputs_regenerate_unchanged(tmp_path):
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_exercise_refs
    finally:
        sys.path.remove(str(FIXTURES))
    new, stored = load_file(str(make_exercise_refs.make(tmp_path))), load_file(str(FIXTURES / "exercise_refs.safetensors"))
    assert new.keys() == stored.keys(), f"keys differ: {sorted(new.keys() ^ stored.keys())}"
    for key in stored:  # only float rounding may differ between machines
        torch.testing.assert_close(new[key], stored[key], rtol=1e-6, atol=1e-6, msg=lambda m, key=key: (
            f"tests/fixtures/make_exercise_refs.py now writes another {key}: rerun it and commit the file. {m}"))


