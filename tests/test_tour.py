"""docs/TOUR.md cannot rot: every command in it names scripts, flags, test files and tests
that exist, its Python snippets import names that exist, every code line an exercise tells
you to change is in the file it names, and every function its "Read:" lines point at is
defined there. Nothing here trains or loads weights."""
import ast
import re
from pathlib import Path

import pytest

from doc_text import ROOT, SCRIPTS, bash_commands, check_train_args, missing_paths
from minbert.exercises.regions import MANIFEST

DOC = ROOT / "docs" / "TOUR.md"
OTHER_COMMANDS = ("git", "pip", "make", ".", "nvidia-smi")  # shown in prose or run by the student's shell


def text() -> str:
    return DOC.read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text(), flags=re.S)


def commands() -> list[list[str]]:
    return bash_commands(text(), DOC.name)


def python_commands(kind: str) -> list[list[str]]:
    """kind: 'pytest', '-c', or a script name -> the arguments after it."""
    found = []
    for argv in commands():
        if argv[0] != "python":
            continue
        if kind == "pytest" and argv[1:3] == ["-m", "pytest"]:
            found.append(argv[3:])
        elif kind == "-c" and argv[1] == "-c":
            found.append(argv[2:])
        elif argv[1] == kind:
            found.append(argv[2:])
    return found


def test_every_command_is_a_kind_this_test_checks():
    for argv in commands():
        ok = (argv[0] == "python" and (argv[1] in SCRIPTS or argv[1] == "-c" or argv[1:3] == ["-m", "pytest"])
              or argv[0] in OTHER_COMMANDS)
        assert ok, f"{DOC.name}: teach tests/test_students.py to check this command: {' '.join(argv)}"
    assert len(python_commands("pytest")) >= 8 and len(python_commands("train_multitask.py")) >= 5


def test_paths_named_in_the_doc_exist():
    missing = missing_paths(DOC)
    assert not missing, f"{DOC.name} names files that do not exist: {missing}"


def test_names_of_tests_for_k_and_node_ids(tmp_path):
    def test_names(files):
        return {n for f in files for n in re.findall(r"^def (test_\w+)", (ROOT / f).read_text(), flags=re.M)}

    for args in python_commands("pytest"):
        files = [a.split("::")[0] for a in args if a.startswith("tests/")]
        assert files, f"name the test file: python -m pytest {' '.join(args)}"
        for f in files:
            assert (ROOT / f).exists(), f"no test file {f}"
        names = test_names(files)
        for a in args:
            if "::" in a:
                name = a.split("::")[1].split("[")[0]
                assert name in names, f"no test {name} in {a.split('::')[0]}"
        if "-k" in args:
            words = [w for w in re.findall(r"\w+", args[args.index("-k") + 1]) if w not in ("and", "or", "not")]
            for w in words:
                assert any(w in n for n in names), f"-k {w}: no test in {files} has it in its name"
    # node ids and test names mentioned in the prose, e.g. `test_adamw_bias_correction[loop]`
    all_tests = test_names(p.relative_to(ROOT) for p in (ROOT / "tests").glob("test_*.py"))
    for name in set(re.findall(r"(?<![/\w])(test_\w+)(?![\w.])", text())):  # not tests/test_x.py
        assert name in all_tests, f"{DOC.name} names a test that does not exist: {name}"


def test_train_multitask_commands_parse_and_resolve(capsys):
    """Each command's flags and values, checked as the script checks them, with --print_config
    so that nothing trains."""
    for args in python_commands("train_multitask.py"):
        # the one command whose error is the lesson: a bad value of --pooling
        lesson = "--pooling" in args and args[args.index("--pooling") + 1] not in ("cls", "mean", "max", "pooler")
        check_train_args(args, capsys, "unknown pooling" if lesson else "")


def test_other_script_flags_exist():
    for script in ("evaluate.py", "show_attention.py"):
        source = (ROOT / script).read_text()
        for args in python_commands(script):
            for flag in (a for a in args if a.startswith("--")):
                assert f'"{flag}"' in source, f"python {script}: no flag {flag}"


def test_python_snippets_compile_and_import_what_exists():
    import importlib
    snippets = python_commands("-c")
    assert len(snippets) >= 6
    for (code, *_) in snippets:
        tree = ast.parse(code)  # a syntax error fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in ("minbert", "show_attention"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                        f"{DOC.name}: from {node.module} import {alias.name}: no such name")


def test_exercise_edits_remove_lines_that_are_in_the_code():
    if (ROOT / MANIFEST).exists():
        pytest.skip("a student copy: the doc's edits quote solution lines that the copy's stubs replace")
    diffs = blocks("diff")
    assert len(diffs) >= 6
    for d in diffs:
        path = re.search(r"^--- (\S+)", d, flags=re.M)
        assert path, f"a diff block of {DOC.name} must start with --- <file>"
        source = (ROOT / path.group(1)).read_text()
        removed = [line[1:] for line in d.splitlines() if line.startswith("-") and not line.startswith("---")]
        added = [line[1:] for line in d.splitlines() if line.startswith("+") and not line.startswith("+++")]
        assert removed and len(removed) == len(added), d
        for line in removed:
            assert line in source, f"{path.group(1)} no longer has the line this exercise changes: {line.strip()}"
        for line in added:
            assert line not in source, f"{path.group(1)} already has the exercise's line: {line.strip()}"


def defined_names(path: Path) -> set[str]:
    """Top-level classes, functions and assignments, and Class.method, of one file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("line", [line for line in text().splitlines() if line.startswith("**Read:**")])
def test_read_lines_point_at_definitions(line):
    current = None
    for item in re.findall(r"`([^`]+)`", line):
        if item.endswith(".py"):
            current = ROOT / item
            assert current.exists(), item
        else:
            assert current is not None and item in defined_names(current), (
                f"{DOC.name}: {item} is not defined in {current.relative_to(ROOT)}")
