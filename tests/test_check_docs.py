"""tools/check_docs.py (make check-docs): a measured figure in the docs names the committed
output it comes from, and every commit the docs name is in the history."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_docs  # noqa: E402

KNOWN = {"docs/benchmarks/cpu-x/optim.txt", "docs/benchmarks/cpu-x/", "docs/benchmarks/", "results/table.md"}


def problems(tmp_path, text, history=lambda c: c == "abc1234"):
    md = tmp_path / "page.md"
    md.write_text(text)
    return check_docs.check_file(md, KNOWN, history)


def test_a_figure_without_its_output_is_named(tmp_path):
    found = problems(tmp_path, "# Speed\n\nAn update takes 4 ms and AdamW is 1.08x torch's fused.\n")
    assert len(found) == 1 and "'4 ms'" in found[0] and "'1.08x'" in found[0] and ":3:" in found[0]


def test_a_figure_citing_a_committed_output_in_its_section_passes(tmp_path):
    text = ("# Speed\n\nAn update takes 4 ms (`docs/benchmarks/cpu-x/optim.txt`).\n\n"
            "## Other\n\nResults in [the table](results/table.md): 58 s.\n")
    assert problems(tmp_path, text) == []


def test_the_citation_must_be_in_the_same_section_and_committed(tmp_path):
    text = "# A\n\nsee docs/benchmarks/cpu-x/optim.txt\n\n## B\n\n58 s, from results/missing.md\n"
    found = problems(tmp_path, text)
    assert len(found) == 1 and "'58 s'" in found[0]


def test_code_paper_numbers_and_marked_limits_are_not_figures(tmp_path):
    text = ("# Notes\n\n```\n$ time run\n58 s\n```\n\n`--deadline 10 min` is a flag.\n"
            "The paper reports 1.5x.\nA budget of 11 min. <!-- not measured -->\n")
    assert problems(tmp_path, text) == []


def test_a_commit_not_in_history_is_named(tmp_path):
    text = "# Runs\n\nMade at commit abc1234, then at commits 1234abc/abc1234 (docs/benchmarks/cpu-x/).\n"
    found = problems(tmp_path, text)
    assert found == [f"{tmp_path / 'page.md'}:3: commit 1234abc is not in this repository's history"]


def test_every_page_cites_an_output_for_every_figure():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [p for page in pages for p in check_docs.check_file(page)]
    assert found == [], "figures without their committed output:\n" + "\n".join(found)


def test_a_section_naming_other_commits_than_its_outputs_record_is_named(tmp_path, monkeypatch):
    out = tmp_path / "docs" / "benchmarks" / "run"
    out.mkdir(parents=True)
    (out / "result.json").write_text('{"commit": "feed123", "ms": 4}')
    monkeypatch.setattr(check_docs, "ROOT", tmp_path)
    known = {"docs/benchmarks/run/result.json", "docs/benchmarks/run/", "docs/benchmarks/"}
    md = tmp_path / "page.md"
    md.write_text("# Speed\n\nAt commit abc1234: 4 ms (docs/benchmarks/run/result.json).\n")
    found = check_docs.check_file(md, known, lambda c: True)
    assert found == ["page.md:3: the section names commit(s) abc1234 but the outputs it cites record feed123"]
    md.write_text("# Speed\n\nAt commit feed123: 4 ms (docs/benchmarks/run/result.json).\n")
    assert check_docs.check_file(md, known, lambda c: True) == []
