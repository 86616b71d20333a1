"""The README's Python snippets run as written (on the tiny model where they would train)."""
import re
from pathlib import Path

from conftest import MINILM, need

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    text = README.read_text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_python_api_snippets():
    codes = snippets()
    assert len(codes) == 4 and "return_tensors=\"pt\"" in codes[0] and "load_run" in codes[2]


def test_readme_snippets_run(tiny_model, tiny_data, tmp_path, one_thread):
    need(MINILM, "all-MiniLM-L6-v2 weights", "model")
    encoder, pooled, loading, training = snippets()
    training = training.replace('max_steps=20, output_dir="runs/gse-short"',
                                f'max_steps=2, output_dir="{tmp_path / "gse"}", model="{tiny_model}", '
                                f'data_dir="{tiny_data}", device="cpu", batch_size=4, max_eval_examples=8')
    loading = loading.replace('"runs/gse"', f'"{tmp_path / "gse"}"')
    scope = {}
    for code in (encoder, pooled, training, loading):
        exec(compile(code, str(README), "exec"), scope)
    assert scope["out"].last_hidden_state.shape[-1] == 384 and len(scope["out"].attentions) == 6
    assert scope["result"]["global_step"] == 2
    assert scope["run"].exp == scope["exp"], "load_run should rebuild the experiment the snippet trained"
    scores = scope["evaluate"](scope["run"].model, scope["dev"], 8, 0, scope["run"].device)
    assert set(scores) == {"sst_accuracy", "quora_accuracy", "quora_f1", "sts_pearson", "sts_spearmanr", "overall"}
