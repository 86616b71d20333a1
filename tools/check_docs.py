"""Figures in README.md and docs/*.md that cite no committed output, or a commit not in history.

    python tools/check_docs.py                 (make check-docs) README.md and docs/*.md
    python tools/check_docs.py FILE.md ...     these files

How it decides:
- A figure is a measured number: digits with a unit of time, speed, size or ratio
  (58 s, 4 ms/update, 10 min, 1.08x, 3.2 tokens/s, 270 MB, 12%). Fenced code blocks, inline
  `code` and HTML comments are not read; a line holding `paper` (the paper's own numbers) or
  ending in `<!-- not measured -->` (a figure that is not a measurement: a limit, a default,
  a budget) is not a figure.
- A figure must cite its output: its section (from its heading to the next heading of any
  level) names a file or folder under docs/benchmarks/ or results/ that git tracks, as a
  path from the repository root or as a link relative to the Markdown file.
- Every commit the text names (a 7-40 digit hex word after "commit" or "commits", as in
  "commit 1a2b3c4" or "commits 1a2b3c4/5d6e7f8") must be in the repository's history, and
  where a section names commits and the outputs it cites record theirs (`"commit": "..."` in
  a JSON file, `commit: ...` in a text one), at least one named commit must be among those.
Exit status 1, with one line per problem (file:line: what), when any is found.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("docs/benchmarks/", "results/")
UNITS = (r"(?:ms/update|ms/step|ms|tokens/s|steps/s|updates/s|examples/s|s|sec|seconds?|min|minutes?|h|hours?"
         r"|%|[KMG]i?B)")
NUMBER = r"(?<![\w.,-])(?:\d[\d,]*\d|\d)(?:\.\d+)?"
FIGURE = re.compile(rf"{NUMBER}(?:\s?{UNITS}|x)(?![\w/])")  # a ratio is written 1.08x
COMMITS = re.compile(r"\bcommits?\b[^.\n]{0,60}", re.I)
HEX = re.compile(r"(?<![\w-])([0-9a-f]{7,40})(?![\w-])")
PATH = re.compile(r"[\w./-]*(?:benchmarks|results)/[\w./+-]*")


def tracked() -> set[str]:
    """The files git tracks, and every folder above one (as 'folder/')."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    files = {f for f in out.decode().split("\0") if f}
    folders = {str(Path(f).parent) + "/" for f in files}
    folders |= {str(p) + "/" for f in files for p in Path(f).parents if str(p) != "."}
    return files | folders


def in_history(commit: str) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True).returncode == 0


def readable_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) outside fenced code and HTML comments, inline code removed."""
    out, fenced, comment = [], False, False
    for n, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if comment:
            if "-->" in line:
                comment, line = False, line.split("-->", 1)[1]
            else:
                continue
        marked = line.rstrip().endswith("<!-- not measured -->")
        line = re.sub(r"<!--.*?-->", "", line)
        if "<!--" in line:
            line, comment = line.split("<!--", 1)[0], True
        out.append((n, "" if marked else line))
    return out


def cited(section: list[tuple[int, str]], md: Path, known: set[str]) -> list[str]:
    """The committed outputs a section names (paths from the root, or links relative to md)."""
    found = []
    for _, line in section:
        for raw in PATH.findall(line):
            raw = raw.rstrip(".,:;")
            for candidate in (raw, (md.parent / raw).resolve().relative_to(ROOT).as_posix() if
                              (md.parent / raw).resolve().is_relative_to(ROOT) else raw):
                c = candidate.lstrip("./") if candidate.startswith("./") else candidate
                if c.startswith(OUTPUTS) and (c in known or c.rstrip("/") + "/" in known):
                    found.append(c)
    return found


RECORDED = re.compile(r"""["']?commit["']?\s*[:=]\s*["']?([0-9a-f]{7,40})""")


def recorded_commits(outputs: list[str], known: set[str]) -> set[str]:
    """The commits the cited output files (or the files of cited folders) record."""
    files = {f for c in outputs for f in known  # a cited folder: the files directly in it
             if f == c or (c.endswith("/") and f.startswith(c) and "/" not in f[len(c):])}
    found = set()
    for f in files:
        path = ROOT / f
        if path.is_file() and path.suffix in (".json", ".txt", ".md", ".jsonl"):
            found |= set(RECORDED.findall(path.read_text(encoding="utf-8", errors="replace")))
    return found


def check_file(md: Path, known: set[str] | None = None, history=in_history) -> list[str]:
    known = tracked() if known is None else known
    rel = md.resolve().relative_to(ROOT).as_posix() if md.resolve().is_relative_to(ROOT) else str(md)
    lines = readable_lines(md.read_text(encoding="utf-8"))
    problems, sections, current = [], [], []
    for n, line in lines:
        if re.match(r"#{1,6} ", line):
            sections.append(current)
            current = []
        current.append((n, line))
    sections.append(current)
    for section in sections:
        prose = [(n, re.sub(r"`[^`]*`", "", line)) for n, line in section]
        figures = [(n, m.group(0)) for n, line in prose if "paper" not in line.lower()
                   for m in FIGURE.finditer(line)]
        if figures and not cited(section, md, known):
            shown = ", ".join(f"{f!r} (line {n})" for n, f in figures[:4]) + (" ..." if len(figures) > 4 else "")
            problems.append(f"{rel}:{figures[0][0]}: {len(figures)} figure(s) cite no committed output: {shown}; "
                            f"name the file under {' or '.join(OUTPUTS)} they come from in this section")
        named = []
        for n, line in section:
            for m in COMMITS.finditer(line):
                for commit in HEX.findall(m.group(0)):
                    if not any(c.isdigit() for c in commit):
                        continue
                    named.append((n, commit))
                    if not history(commit):
                        problems.append(f"{rel}:{n}: commit {commit} is not in this repository's history")
        recorded = recorded_commits(cited(section, md, known), known) if named else set()
        if recorded and not any(a.startswith(b) or b.startswith(a) for _, a in named for b in recorded):
            problems.append(f"{rel}:{named[0][0]}: the section names commit(s) {', '.join(c for _, c in named)} but "
                            f"the outputs it cites record {', '.join(sorted(recorded))}")
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = [Path(a) for a in args] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    known = tracked()
    problems = [p for f in files if f.is_file() for p in check_file(f, known)]
    for p in problems:
        print(p)
    print(f"check_docs: {len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
