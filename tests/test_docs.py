"""The docs stay a map of the code as it is: docs/STRUCTURE.md has a row for every module of the
package, every file the docs name exists, and the docs explain the code rather than narrate
how it came to be (that is docs/HISTORY.md's job alone)."""
import re

import pytest

from doc_text import ROOT, missing_paths

DOCS = ROOT / "docs"
STRUCTURE = DOCS / "STRUCTURE.md"
EXPLAINING = ("README.md", "docs/TOUR.md", "docs/STRUCTURE.md", "docs/TEACHING.md", "docs/SMART.md")


def rows(md: str) -> set[str]:
    """The backticked names in the first cell of each table row."""
    return {name for line in md.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([^`]+)`", line.split("|")[1])}


def test_structure_has_a_row_for_every_module():
    """A module added without saying what it is for, and whether a student edits, reads or can
    ignore it, fails here."""
    listed = rows(STRUCTURE.read_text(encoding="utf-8"))
    package = ROOT / "minbert"
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name in ("__init__.py", "__main__.py") or rel.parts[0] == "exercises":
            continue  # a package's own files; the course kit has one row, `exercises/`
        # a row names the file by its path below its folder's section: `model.py`, `optim/adamw.py`, `folder.py`
        name = str(rel) if rel.parts[0] == "optim" else path.name
        if name not in listed:
            missing.append(str(rel))
    assert not missing, f"docs/STRUCTURE.md has no row for minbert/{', minbert/'.join(missing)}"
    assert "exercises/" in listed
    for script in ("train_multitask.py", "evaluate.py", "show_attention.py"):
        assert script in listed, f"docs/STRUCTURE.md has no row for {script}"


def test_structure_rows_are_files_that_exist():
    """Each row names a file or folder of the section's folder (`minbert/run/` for its table)."""
    folder, missing = ROOT, []
    for line in STRUCTURE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = re.search(r"`([^`]+/)`", line)
            folder = ROOT / heading.group(1) if heading else ROOT
        elif line.startswith("| `"):
            for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
                if not any(c in name for c in "*, ") and not (folder / name.rstrip("/")).exists():
                    missing.append(str((folder / name).relative_to(ROOT)))
    assert not missing, f"docs/STRUCTURE.md has rows for files that do not exist: {missing}"


def test_structure_says_edit_read_or_ignore_for_each_row():
    for line in STRUCTURE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `") and line.count("|") == 4:  # the tables with a "you" column
            you = line.split("|")[3].lower()
            assert any(w in you for w in ("edit", "read", "ignore")), f"docs/STRUCTURE.md: say edit, read or ignore: {line}"


def test_each_exercise_file_is_marked_edit():
    from minbert.exercises.registry import EXERCISES

    text = STRUCTURE.read_text(encoding="utf-8")
    for e in EXERCISES.values():
        line = next((row for row in text.splitlines() if row.startswith("| `") and f"`{e.id}`" in row.split("|")[-2]), "")
        assert "edit" in line, f"docs/STRUCTURE.md must mark {e.file} as edit, naming exercise `{e.id}`"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_paths_named_in_the_docs_exist(doc):
    missing = missing_paths(DOCS / doc)
    assert not missing, f"docs/{doc} names files that do not exist: {missing}"


NARRATION = [
    (r"\((?:before|now)\)", "a (before)/(now) row: say what the code does; history goes to docs/HISTORY.md"),
    (r"\bthe old form\b|\bused to\b|\bno longer\b", "history of earlier forms: docs/HISTORY.md"),
    (r"\b[Ii]ssues? \d+|(?<![\w&(])#\d+\b(?!-)", "a tracker number: say what the thing is"),
    (r"\bsessions?\b|\bno GPU\b", "how the project was built, not what it does"),
    (r"(?<![\w.])/(?:work|root|home|tmp)/", "an absolute machine path"),
]


@pytest.mark.parametrize("doc", EXPLAINING)
def test_docs_explain_rather_than_narrate(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    for pattern, why in NARRATION:
        hit = re.search(pattern, text)
        assert not hit, f"{doc}: {hit.group(0)!r}: {why}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md"] + [f"docs/{p.name}" for p in sorted(DOCS.glob("*.md"))])
def test_section_links_reach_a_heading(doc):
    path = ROOT / doc
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", path.read_text(encoding="utf-8")):
        linked = (path.parent / target) if target else path
        if not linked.exists():
            continue  # test_paths_named_in_the_docs_exist names it
        anchors = {slug(line.lstrip("#")) for line in linked.read_text(encoding="utf-8").splitlines()
                   if line.startswith("#")}
        assert anchor in anchors, f"{doc}: no heading of {target or doc} has the anchor #{anchor}"
