"""Exercise regions in the solution, and the student copy made from them.

A region is the solution code between two comment lines at the same indent,

    <indent># BEGIN EXERCISE <id>
    ...the ordinary solution...
    <indent># END EXERCISE <id>

inside one of the functions the registry names for <id>. In the student copy each region
becomes a stub at that indent, one comment naming the exercise, its equation and its section
of docs/TOUR.md, and `raise ExerciseNotImplemented("<id>")`; the signature, docstring and
shape comments around it stay. Files under tests/ are not scanned (they hold examples).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from minbert.exercises.registry import EXERCISES, TOUR

ROOT = Path(__file__).resolve().parents[2]  # the repository (or copy) this package lies in
MARKER = re.compile(r"^(?P<indent>[ \t]*)# (?P<kind>BEGIN|END) EXERCISE (?P<id>\S+)[ \t]*$")
LOOSE = re.compile(r"^\s*#.*\b(BEGIN|END)\b.*\bEXERCISE\b|^\s*#.*\bEXERCISE\b.*\b(BEGIN|END)\b")
IMPORT = "from minbert.exercises import ExerciseNotImplemented\n"
MANIFEST = ".student_copy.json"  # written into a copy: which exercises it stubs
# never the package's own files: build outputs (`pip wheel .` leaves build/lib/minbert/, a copy of
# the package), virtual environments, runs and caches
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "runs", "__pycache__", ".pytest_cache", ".bundle", ".whl"}


class MarkerError(ValueError):
    """A marker line that is malformed, unpaired, nested, or names no registered exercise."""


@dataclass(frozen=True)
class Region:
    id: str
    file: str
    begin: int  # 0-based index of the BEGIN line
    end: int  # 0-based index of the END line
    indent: str
    function: str  # qualified name of the innermost enclosing function


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function, 1-based lines."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    out.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    return out


def find_regions(text: str, file: str) -> list[Region]:
    """The regions of one file's text; MarkerError names the file and line of any fault."""
    lines = text.splitlines()
    regions, open_ = [], None
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        where = f"{file}:{i + 1}"
        if not m:
            if LOOSE.match(line):
                raise MarkerError(f"{where}: malformed exercise marker {line.strip()!r}; "
                                  f"write '# BEGIN EXERCISE <id>' or '# END EXERCISE <id>'")
            continue
        ex, kind = m["id"], m["kind"]
        if ex not in EXERCISES:
            raise MarkerError(f"{where}: exercise {ex!r} is not in the registry "
                              f"(minbert/exercises/registry.py): known ids are {', '.join(EXERCISES)}")
        if kind == "BEGIN":
            if open_ is not None:
                raise MarkerError(f"{where}: BEGIN EXERCISE {ex} inside the region {open_[1]!r} opened "
                                  f"at line {open_[0] + 1}; regions do not nest")
            open_ = (i, ex, m["indent"])
            continue
        if open_ is None:
            raise MarkerError(f"{where}: END EXERCISE {ex} without a BEGIN above it")
        if open_[1] != ex or open_[2] != m["indent"]:
            raise MarkerError(f"{where}: END EXERCISE {ex} closes the region {open_[1]!r} opened at line "
                              f"{open_[0] + 1}; BEGIN and END need the same id and the same indent")
        regions.append(Region(ex, file, open_[0], i, open_[2], ""))
        open_ = None
    if open_ is not None:
        raise MarkerError(f"{file}:{open_[0] + 1}: BEGIN EXERCISE {open_[1]} is never closed")
    if not regions:
        return []
    functions = _functions(ast.parse(text, filename=file))
    placed = []
    for r in regions:
        inside = [(a, b, name) for a, b, name in functions if a < r.begin + 1 < b]  # b: its last statement
        name = max(inside)[2] if inside else "<module>"  # the innermost: the latest first line
        e = EXERCISES[r.id]
        if file != e.file or name not in e.functions:
            raise MarkerError(f"{file}:{r.begin + 1}: region {r.id!r} is in {name} of {file}; the registry "
                              f"puts it in {e.where}")
        placed.append(Region(r.id, file, r.begin, r.end, r.indent, name))
    return placed


def _skipped(file: str) -> bool:
    """A file under a build output, environment, run or cache folder (SKIP_DIRS), which git lists when
    the checkout's .gitignore predates it."""
    return any(part in SKIP_DIRS or part.endswith(".egg-info") for part in Path(file).parts[:-1])


def source_files(root: Path = ROOT) -> list[str]:
    """The repository's files a student needs, relative to root: git's tracked and untracked
    but not ignored files in a git checkout, else a walk that skips data sets, runs and caches."""
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True).stdout
        return sorted({f for f in out.decode().split("\0") if f and (root / f).is_file() and not _skipped(f)})
    files = []
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                         and not (rel == Path("data") and (root / "data" / d).is_dir()))
        files += [(rel / n).as_posix() for n in names if not n.endswith(".pyc")]
    return sorted(files)


def scan(root: Path = ROOT) -> dict[str, list[Region]]:
    """file -> its regions, for every .py file outside tests/; MarkerError unless every
    registered exercise has at least one region."""
    found = {}
    for f in source_files(root):
        if f.endswith(".py") and not f.startswith("tests/"):
            regions = find_regions((root / f).read_text(encoding="utf-8"), f)
            if regions:
                found[f] = regions
    missing = set(EXERCISES) - {r.id for rs in found.values() for r in rs}
    if missing and not (root / MANIFEST).exists():
        raise MarkerError(f"no region for exercise(s) {', '.join(sorted(missing))} (registered in "
                          f"minbert/exercises/registry.py); mark its code with BEGIN/END EXERCISE lines")
    return found


def stub(region: Region) -> list[str]:
    e = EXERCISES[region.id]
    return [f"{region.indent}# EXERCISE {region.id}: write this part ({TOUR}, section {e.section})\n",
            f"{region.indent}# {e.paper}: {e.equation}\n",
            f"{region.indent}raise ExerciseNotImplemented({region.id!r})\n"]


def render(text: str, regions: list[Region], ids) -> str:
    """text with the regions of these ids replaced by stubs; other regions are left as they are."""
    lines = text.splitlines(keepends=True)
    chosen = [r for r in regions if r.id in ids]
    if not chosen:
        return text
    for r in sorted(chosen, key=lambda r: -r.begin):
        lines[r.begin:r.end + 1] = stub(r)
    body = ast.parse(text).body
    i = 0  # after the module's docstring, `from __future__` and import block
    while i < len(body) and (isinstance(body[i], (ast.Import, ast.ImportFrom))
                             or (i == 0 and isinstance(body[i], ast.Expr))):
        i += 1
    at = body[i - 1].end_lineno if i else 0  # the regions all lie below the imports
    lines.insert(at, IMPORT)
    return "".join(lines)


def make(dest: Path, ids=None, root: Path = ROOT) -> list[str]:
    """Writes the student copy of root into dest (absent or empty), with the regions of ids
    (default: every exercise) stubbed. Returns the files written."""
    ids = list(EXERCISES) if ids is None else list(ids)
    unknown = [ex for ex in ids if ex not in EXERCISES]
    if unknown:
        raise ValueError(f"unknown exercise(s) {', '.join(unknown)}; known: {', '.join(EXERCISES)}")
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} exists and is not an empty folder; give a new or empty folder")
    regions = scan(root)
    files = source_files(root)  # listed while dest is empty: a copy inside root lists none of its own
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if f in regions:
            text = (root / f).read_text(encoding="utf-8")
            target.write_text(render(text, regions[f], ids), encoding="utf-8")
        else:
            shutil.copyfile(root / f, target)
            shutil.copymode(root / f, target)
    (dest / MANIFEST).write_text(json.dumps({"stubbed": ids}) + "\n")
    return files
