"""Plant each bug of mutants.py, one at a time, in a copy of the tree, and run the tests.

    python tools/mutants/run.py                    every mutant, named tests first, the rest if needed
    python tools/mutants/run.py --only gse-no-surgery,pooling-cls-last
    python tools/mutants/run.py --rev HEAD~3       plant into the files of another commit
    python tools/mutants/run.py --named_only       no fallback to the rest of the suite
    python tools/mutants/run.py --rest tests/test_training.py,tests/test_sources.py   a smaller fallback

The copy is made from the files git tracks (at --rev, or the working tree's current
contents); the working tree is never written. For each mutant: the tests named for its idea
run first (pytest -x); if none of them fails, the rest of the suite runs (-x), so a bug
caught only by another test is reported as such. The table gives the bug, the test that
caught it, whether that test is the one named for the idea, and the seconds it took.
Exit status 1 when a bug survives or is caught only by a test about something else.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from mutants import FILES, MUTANTS  # noqa: E402


def check(mutant: dict, text: str) -> str | None:
    """None when the snippet occurs exactly once in `text`, else what is wrong."""
    n = text.count(mutant["old"])
    where = FILES[mutant["file"]]
    return None if n == 1 else f"{mutant['name']}: snippet {mutant['old']!r} occurs {n} times in {where}"


def copy_tree(dest: Path, rev: str | None):
    """The tracked files (at rev, or as they are now in the working tree) into dest."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def failed_test(output: str) -> str | None:
    """The first failing test's node id in pytest -q -rf output, if any."""
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return found.group(1) if found else None


def pytest(tree: Path, args: list[str], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", *args]
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return p.returncode, p.stdout + p.stderr


def existing(tree: Path, tests: list[str]) -> list[str]:
    """The named tests this tree has (a file, or file::function)."""
    have = []
    for t in tests:
        path, _, name = t.partition("::")
        f = tree / path
        if f.is_file() and (not name or re.search(rf"^def {re.escape(name)}\(", f.read_text(), re.M)):
            have.append(t)
    return have


def run_one(tree: Path, mutant: dict, named_only: bool, timeout: int, rest: list[str]) -> dict:
    path = tree / FILES[mutant["file"]]
    original = path.read_text()
    problem = check(mutant, original)
    if problem:
        return {"name": mutant["name"], "caught_by": None, "named": False, "seconds": 0.0, "note": problem}
    path.write_text(original.replace(mutant["old"], mutant["new"]))
    start = time.time()
    try:
        named = existing(tree, mutant["tests"])
        if named:
            rc, out = pytest(tree, named, timeout)
            if rc not in (0, 5):
                return {"name": mutant["name"], "caught_by": failed_test(out) or f"(pytest exit {rc})",
                        "named": True, "seconds": time.time() - start, "note": ""}
        note = "" if named else "named test absent"
        if named_only:
            return {"name": mutant["name"], "caught_by": None, "named": False, "seconds": time.time() - start,
                    "note": note}
        rc, out = pytest(tree, [*rest, *(f"--deselect={t}" for t in named)], timeout)
        caught = failed_test(out) if rc not in (0, 5) else None
        return {"name": mutant["name"], "caught_by": caught or (f"(pytest exit {rc})" if rc not in (0, 5) else None),
                "named": False, "seconds": time.time() - start, "note": note}
    finally:
        path.write_text(original)


def table(rows: list[dict]) -> str:
    lines = ["| bug | idea | caught by | named test | seconds |", "|---|---|---|---|---|"]
    ideas = {m["name"]: m["idea"] for m in MUTANTS}
    for r in rows:
        caught = f"`{r['caught_by']}`" if r["caught_by"] else "**survived**"
        named = "yes" if r["named"] else ("no" if r["caught_by"] else "")
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['name']} | {ideas[r['name']]}{note} | {caught} | {named} | {r['seconds']:.1f} |")
    caught = sum(bool(r["caught_by"]) for r in rows)
    by_name = sum(r["named"] for r in rows)
    lines.append(f"\n{caught} of {len(rows)} caught, {by_name} by the test named for the idea; "
                 f"{sum(r['seconds'] for r in rows):.0f} s in all")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--rev", default=None, help="plant into this commit's files instead of the working tree")
    ap.add_argument("--named_only", action="store_true", help="run only the named tests, no fallback")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--rest", default="", help="comma-separated test files to run when the named tests pass "
                                               "(default: the whole suite)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m["name"] in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {m["name"] for m in MUTANTS}
    if unknown:
        ap.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="minbert-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree, args.rev)
        for m in chosen:
            row = run_one(tree, m, args.named_only, args.timeout, [t for t in args.rest.split(",") if t])
            rows.append(row)
            print(f"{row['name']:36s} {row['caught_by'] or 'SURVIVED'} ({row['seconds']:.1f} s)", flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["named"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
