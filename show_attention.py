"""Draws one layer's attention maps for a sentence or a sentence pair into a PNG.

Row i of a head's map is softmax(q_i K^T / sqrt(d_k)) (Vaswani et al. 2017, eq. 1): how much
token i reads from each token of the input. Layers and heads count from 0.

    python show_attention.py "The cat sat on the mat." --layer 3 --out attention.png
    python show_attention.py "A man plays a flute." "A man plays music." --layer 0 --head 5

The maps are BertModel(..., output_attentions=True).attentions[layer] (minbert/model.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from minbert import BertModel, BertTokenizer
from minbert.experiments import DEFAULT_MODEL


def attention_maps(model: BertModel, tok: BertTokenizer, text: str, pair: str | None, layer: int):
    """-> (word pieces, (nh, T, T) attention probabilities of `layer`) for one sentence or pair."""
    enc = tok(text, pair, max_length=model.config.max_position_embeddings)
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    return tok.convert_ids_to_tokens(enc["input_ids"][0]), out.attentions[layer][0]


def draw(tokens: list[str], maps: torch.Tensor, heads: list[int], title: str, out: Path):
    """One panel per head: query tokens down, key tokens across, one colour scale for all panels."""
    n, T = len(heads), len(tokens)
    cols = min(n, 4)
    rows = -(-n // cols)
    side = max(2.5, 0.2 * T)  # inches per panel: room for T labels
    fig = Figure(figsize=(cols * side + 1.5, rows * side + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    vmax = maps[heads].max().item()
    for i, (ax, h) in enumerate(zip(axes, heads)):
        image = ax.imshow(maps[h].numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(T), tokens if i + cols >= n else [], rotation=90, fontsize=7)  # bottom panels
        ax.set_yticks(range(T), tokens if i % cols == 0 else [], fontsize=7)  # left panels
        if i + cols >= n:
            ax.set_xlabel("key (attended to)", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("query", fontsize=8)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes[:n].tolist(), shrink=0.8, label="attention probability")
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("pair", nargs="?", help="a second sentence: encoded [CLS] A [SEP] B [SEP]")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--head", default="all", help="'all' (one panel per head) or a head number")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a Hugging Face model folder or hub id")
    ap.add_argument("--out", type=Path, default=Path("attention.png"))
    args = ap.parse_args(argv)

    name = Path(args.model).name
    try:
        model = BertModel.from_pretrained(args.model)
        tok = BertTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as e:  # no folder, no weights, offline hub id, bad config
        sys.exit(f"show_attention.py: cannot load the model: {e}")
    n_layer, n_head = model.config.num_hidden_layers, model.config.num_attention_heads
    if not 0 <= args.layer < n_layer:
        sys.exit(f"show_attention.py: --layer {args.layer} is out of range: {name} has {n_layer} layers, "
                 f"0 to {n_layer - 1}")
    if args.head == "all":
        heads = list(range(n_head))
    elif args.head.isdigit() and int(args.head) < n_head:
        heads = [int(args.head)]
    else:
        sys.exit(f"show_attention.py: --head {args.head}: use 'all' or a head number 0 to {n_head - 1} "
                 f"({name} has {n_head} heads)")

    tokens, maps = attention_maps(model, tok, args.text, args.pair, args.layer)
    which = f"{n_head} heads" if len(heads) > 1 else f"head {heads[0]}"
    draw(tokens, maps, heads, f"{name}: layer {args.layer} of 0-{n_layer - 1}, {which}", args.out)
    print(f"wrote {args.out} ({len(tokens)} tokens, layer {args.layer}, {which})")
    return args.out


if __name__ == "__main__":
    main()
