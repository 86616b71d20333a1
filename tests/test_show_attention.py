"""show_attention.py: the command writes a PNG, and bad numbers or a missing model stop with one line."""
import subprocess
import sys
from pathlib import Path

import pytest

import show_attention

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_command_writes_a_png_for_a_sentence_pair(tiny_model, tmp_path):
    out = tmp_path / "maps" / "attention.png"
    run = subprocess.run([sys.executable, str(ROOT / "show_attention.py"), "the cat plays guitar", "a dog runs",
                          "--layer", "1", "--model", str(tiny_model), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes().startswith(PNG_SIGNATURE) and out.stat().st_size > 1000
    assert "layer 1, 4 heads" in run.stdout
    from minbert import BertTokenizer
    n = len(BertTokenizer.from_pretrained(str(tiny_model))("the cat plays guitar", "a dog runs")["input_ids"][0])
    assert f"({n} tokens," in run.stdout, f"the pair is encoded [CLS] A [SEP] B [SEP], {n} word pieces: {run.stdout}"


def test_one_head_of_one_sentence(tiny_model, tmp_path, monkeypatch):
    """The panel drawn is the model's own attention probabilities for that layer and head."""
    import torch

    from minbert import BertModel, BertTokenizer
    images = []
    real_imshow = show_attention.Figure.subplots

    def subplots(fig, *a, **k):  # keep the axes, to read the image drawn on them
        axes = real_imshow(fig, *a, **k)
        images.extend(axes.ravel())
        return axes
    monkeypatch.setattr(show_attention.Figure, "subplots", subplots)
    out = show_attention.main(["good movie", "--head", "2", "--layer", "1", "--model", str(tiny_model),
                               "--out", str(tmp_path / "h.png")])
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    model, tok = BertModel.from_pretrained(str(tiny_model)).eval(), BertTokenizer.from_pretrained(str(tiny_model))
    enc = tok("good movie")
    with torch.no_grad():
        expected = model(**enc, output_attentions=True).attentions[1][0, 2]  # (T, T) of head 2
    drawn = [ax.get_images()[0].get_array() for ax in images if ax.get_images()]
    assert len(drawn) == 1, f"--head 2 should draw one panel, drew {len(drawn)}"
    assert torch.allclose(torch.as_tensor(drawn[0].data), expected, atol=1e-6), \
        "the panel should be layer 1, head 2 of BertModel(..., output_attentions=True).attentions"
    assert images[0].get_title() == "head 2"
    labels = [t.get_text() for t in images[0].get_xticklabels()]
    assert labels == tok.convert_ids_to_tokens(enc["input_ids"][0]) and labels[0] == "[CLS]" and labels[-1] == "[SEP]"


@pytest.mark.parametrize("args, message", [
    (["--layer", "2"], "--layer 2 is out of range: {name} has 2 layers, 0 to 1"),
    (["--head", "4"], "--head 4: use 'all' or a head number 0 to 3"),
    (["--head", "first"], "--head first: use 'all' or a head number 0 to 3"),
])
def test_bad_layer_or_head_is_one_line(tiny_model, tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        show_attention.main(["good movie", "--model", str(tiny_model), "--out", str(tmp_path / "x.png"), *args])
    assert message.format(name=tiny_model.name) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.png").exists()


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        show_attention.main(["good movie", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    message = str(e.value)
    assert message.startswith(f"show_attention.py: cannot load the model: no model folder at {tmp_path / 'nope'}: "
                              f"pass --model") and "MINBERT_MODEL" in message and "\n" not in message, message
