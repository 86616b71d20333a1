"""The README stays short and true: its first screen answers a newcomer's first questions, its
commands parse as the scripts parse them, its line counts and its results table match the
files they come from, every path it names exists, and its Python snippets run as written (on
the tiny model where they would train)."""
import re
import shlex
import subprocess
import sys

import pytest

from conftest import MINILM, need
from doc_text import ROOT, SCRIPTS, bash_commands, check_train_args, missing_paths
from minbert.exercises.regions import MANIFEST

README = ROOT / "README.md"
MAX_LINES = 200
FIRST_SCREEN = 50  # lines


def text() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_short():
    n = len(text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; keep it to {MAX_LINES} and put depth in docs/"


@pytest.mark.parametrize("question, answer", [
    ("where is attention, and its scaling by sqrt(d_k)?", ("minbert/model.py", "BertSelfAttention.forward", "sqrt(d_k)")),
    ("where do the presets differ?", ("minbert/updates.py", "Trainer.update")),
    ("what is the quick command?", ("make test", "make train ARGS=")),
    ("how do I add a head?", ("docs/EXTENDING.md",)),
    ("how do I grade a copy?", ("python -m minbert.exercises check", "docs/TEACHING.md")),
    ("what can I ignore?", ("ignore", "docs/STRUCTURE.md")),
])
def test_first_screen_answers(question, answer):
    screen = "\n".join(text().splitlines()[:FIRST_SCREEN])
    for words in answer:
        assert words in screen, f"README's first {FIRST_SCREEN} lines must answer {question!r}: no {words!r}"


def core_files() -> list[tuple[str, int]]:
    """The `minbert/<file>  <lines>  <clause>` rows of the README's first code block."""
    first = re.search(r"```\n(.*?)```", text(), flags=re.S).group(1)
    return [(path, int(n)) for path, n in re.findall(r"^(minbert/\S+\.py)\s+(\d+)\s", first, flags=re.M)]


def test_core_file_line_counts_are_the_files():
    """Counted with wc -l when written; a file may grow or shrink by a tenth before the README
    must be updated."""
    if (ROOT / MANIFEST).exists():
        pytest.skip("a student copy: its stubs make the exercise files shorter than the README counts")
    rows = core_files()
    assert len(rows) >= 8, rows
    for path, stated in rows:
        actual = len((ROOT / path).read_text(encoding="utf-8").splitlines())
        assert abs(actual - stated) <= max(10, stated // 10), (
            f"README.md says {path} has {stated} lines; it has {actual}: update the README's list")


def table_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def test_results_table_is_the_committed_table():
    """Every number of the README's results table is the one in the file it cites."""
    source = ROOT / "results" / "cs224n_table.md"
    assert "(results/cs224n_table.md)" in text()
    ours = table_rows(text().split("(results/cs224n_table.md)", 1)[1].split("\n## ", 1)[0])
    theirs = table_rows(source.read_text(encoding="utf-8"))
    header = theirs["preset"]
    col = {name: header.index(name) for name in ("SST", "QQP", "STS", "overall", "wall time")}
    shown = [p for p in ours if p != "preset"]
    assert len(shown) >= 3, ours
    for preset in shown:
        row, src = ours[preset], theirs[preset]
        assert row[1:5] == [src[col[c]] for c in ("SST", "QQP", "STS", "overall")], (preset, row, src)
        assert row[-1] == src[col["wall time"]], (preset, row[-1], src[col["wall time"]])
        paper = src[header.index("paper SST / QQP / STS / overall")]
        assert row[5] in paper.split(" / ")[-1] or row[5] in paper, (preset, row[5], paper)


def commands() -> list[list[str]]:
    return bash_commands(text(), README.name)


def test_every_command_is_one_this_test_checks():
    for argv in commands():
        ok = (argv[0] == "make" or argv[:3] == ["python", "-m", "pytest"] or argv[:3] == ["python", "-m", "minbert.exercises"]
              or argv[0] == "python" and argv[1] in SCRIPTS + ("benchmarks/bench_encoder.py",))
        assert ok, f"README.md: teach tests/test_readme.py to check this command: {shlex.join(argv)}"


def test_make_targets_exist_and_their_args_parse(capsys):
    """`make train ARGS="..."` passes ARGS to train_multitask.py: they parse as it parses them."""
    makefile = (ROOT / "Makefile").read_text()
    for argv in (a for a in commands() if a[0] == "make"):
        target = argv[1]
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target}: no such target in the Makefile"
        for arg in argv[2:]:
            name, _, value = arg.partition("=")
            assert name == "ARGS", f"make {target} {arg}: only ARGS is passed on"
            if target == "train":
                check_train_args(["--preset", "baseline"] + shlex.split(value), capsys)


def test_train_multitask_commands_parse_and_resolve(capsys):
    found = [a[2:] for a in commands() if a[:2] == ["python", "train_multitask.py"]]
    assert len(found) >= 4
    for args in found:
        check_train_args(args, capsys)


def test_other_commands_name_what_exists():
    for argv in commands():
        if argv[:3] == ["python", "-m", "pytest"]:
            files = [a.split("::")[0] for a in argv[3:] if a.startswith("tests/")]
            assert files and all((ROOT / f).exists() for f in files), shlex.join(argv)
        elif argv[:3] == ["python", "-m", "minbert.exercises"]:
            source = (ROOT / "minbert" / "exercises" / "__main__.py").read_text()
            assert f'"{argv[3]}"' in source, f"python -m minbert.exercises: no command {argv[3]}"
            for flag in (a for a in argv[4:] if a.startswith("--")):
                assert f'"{flag}"' in source, f"python -m minbert.exercises {argv[3]}: no flag {flag}"
        elif argv[0] == "python" and argv[1] in ("evaluate.py", "show_attention.py"):
            source = (ROOT / argv[1]).read_text()
            for flag in (a for a in argv[2:] if a.startswith("--")):
                assert f'"{flag}"' in source, f"python {argv[1]}: no flag {flag}"


def test_exercises_list_runs_as_shown():
    out = subprocess.run([sys.executable, "-m", "minbert.exercises", "list"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "attention" in out and "docs/TOUR.md" in out


def test_paths_named_in_the_readme_exist():
    missing = missing_paths(README)
    assert not missing, f"README.md names files that do not exist: {missing}"


def snippets() -> list[str]:
    section = text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_the_python_api_snippets():
    codes = snippets()
    assert len(codes) == 4 and 'return_tensors="pt"' in codes[0] and "Trainer(exp)" in codes[2] and "load_run" in codes[3]


def test_readme_snippets_run(tiny_model, tiny_data, tmp_path, one_thread):
    need(MINILM, "all-MiniLM-L6-v2 weights", "model")
    encoder, pooled, training, loading = snippets()
    training = training.replace('max_steps=20, output_dir="runs/gse-short"',
                                f'max_steps=2, output_dir="{tmp_path / "gse"}", model="{tiny_model}", '
                                f'data_dir="{tiny_data}", device="cpu", batch_size=4, max_eval_examples=8')
    loading = loading.replace('"runs/gse-short"', f'"{tmp_path / "gse"}"')
    scope = {}
    for code in (encoder, pooled, training, loading):
        exec(compile(code, str(README), "exec"), scope)
    assert scope["out"].last_hidden_state.shape[-1] == 384 and len(scope["out"].attentions) == 6
    assert scope["result"]["global_step"] == 2
    assert scope["run"].exp == scope["exp"], "load_run should rebuild the experiment the snippet trained"
    scores = scope["evaluate"](scope["run"].model, scope["dev"], 8, 0, scope["run"].device)
    assert set(scores) == {"sst_accuracy", "quora_accuracy", "quora_f1", "sts_pearson", "sts_spearmanr", "overall"}


def test_quick_run_figures_are_the_committed_logs():
    """The short run's score and times in the README are those of results/quick_run/."""
    quick = ROOT / "results" / "quick_run"
    score = re.search(r"overall (0\.\d{4})`", text()).group(1)
    assert f"overall {score}" in (quick / "make_train.log").read_text(), score
    wall, cpu = re.search(r"took\s+(\d+) s of wall time for (\d+) s of CPU", text()).groups()
    table = (quick / "README.md").read_text()
    assert re.search(rf"`make train ARGS=.*\| {wall} s \| {cpu} s \|", table), (wall, cpu)
    assert f"{wall}." in (quick / "make_train.log").read_text(), wall
