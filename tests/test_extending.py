"""Extending is one registry entry (docs/EXTENDING.md): each example of the doc runs, its command
selects the new entry, --help lists it, and a short run trains with it on the tiny model. The
registries are put back after each test."""
import json
import re
import shlex
from pathlib import Path

import pytest

import train_multitask
from minbert import experiments, heads, pooling, updates

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "EXTENDING.md"
MODULES = {"minbert/heads.py": heads, "minbert/pooling.py": pooling, "minbert/updates.py": updates,
           "minbert/experiments.py": experiments}
REGISTRIES = [heads.HEADS, pooling.POOLERS, updates.UPDATES, experiments.PRESETS]


def sections() -> dict[str, tuple]:
    """'A head' -> (the module it goes in, its Python example, its command's arguments)."""
    found = {}
    for part in DOC.read_text(encoding="utf-8").split("\n## ")[1:]:
        title = part.splitlines()[0]
        module = MODULES[re.search(r"`(minbert/\w+\.py)`", part).group(1)]
        code, = re.findall(r"```python\n(.*?)```", part, flags=re.S)
        command, = re.findall(r"```bash\n(.*?)```", part, flags=re.S)
        argv = shlex.split(command)
        assert argv[:2] == ["python", "train_multitask.py"], command
        found[title] = (module, code, argv[2:])
    return found


@pytest.fixture
def registries():
    """The registries as they are, restored after the test (an example adds to them)."""
    saved = [dict(r) for r in REGISTRIES]
    yield
    for registry, entries in zip(REGISTRIES, saved):
        registry.clear()
        registry.update(entries)


def register(title: str) -> list[str]:
    """Runs the doc's example in its module's namespace (the names that file has); returns its
    command's arguments."""
    module, code, args = sections()[title]
    exec(compile(code, f"{DOC.name}: {title}", "exec"), dict(vars(module)))
    return args


def resolved(args: list[str], capsys) -> dict:
    assert train_multitask.main(args + ["--print_config"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_doc_has_one_example_per_registry():
    assert list(sections()) == ["A head", "A pooling", "An update kind", "A preset"]


def test_a_new_head_is_in_help_and_selectable(registries, capsys):
    assert "bilinear" not in train_multitask.build_parser().format_help()
    args = register("A head")
    assert "bilinear (regression)" in " ".join(train_multitask.build_parser().format_help().split())
    assert resolved(args, capsys)["heads"]["sts"] == "bilinear"


def test_what_a_head_serves_is_its_attribute_not_its_name(registries, capsys):
    register("A head")
    assert train_multitask.main(["--heads", "sst=bilinear", "--print_config"]) == 2
    assert "head 'bilinear' serves regression tasks; task sst is classification" in capsys.readouterr().err

    class CosineLike(heads.Linear):  # a name starting with "cos" does not make a score head
        pass
    heads.HEADS["cosine-like"] = CosineLike
    heads.check_head("cosine-like", "sst")
    with pytest.raises(ValueError, match="does not fit pair_input=siamese for quora"):
        experiments.preset("baseline", heads={"quora": "cosine-like"})  # one segment: cross input


def test_a_new_pooling_update_and_preset_are_selectable(registries, capsys):
    pool_args = register("A pooling")
    assert resolved(pool_args, capsys)["pooling"] == "mean-sqrt-len"
    update_args = register("An update kind")
    assert resolved(update_args, capsys)["update"] == "one-task"
    preset_args = register("A preset")
    config = resolved(preset_args, capsys)
    assert (config["name"], config["update"], config["warmup_ratio"]) == ("gse-warmup", "gse", 0.1)
    help_text = " ".join(train_multitask.build_parser().format_help().split())
    assert "mean-sqrt-len" in help_text and "one-task: one task per step, in turn (presets: none)" in help_text
    assert "gse-warmup" in help_text


@pytest.mark.parametrize("title", ["A head", "A pooling", "An update kind"])
def test_the_examples_train(title, registries, tiny_model, tiny_data, tmp_path, one_thread):
    """Each extension through the whole loop: two steps and an evaluation on the tiny model."""
    args = register(title)
    toy = ["--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "run"),
           "--device", "cpu", "--max_steps", "2", "--batch_size", "4", "--eval_batch_size", "8",
           "--max_eval_examples", "8", "--no-save_checkpoints"]
    assert train_multitask.main(args + toy) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["global_step"] == 2 and "eval_overall" in results
