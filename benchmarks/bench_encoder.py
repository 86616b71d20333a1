"""Encoder training throughput: minbert.BertModel against transformers.BertModel holding
the same weights, on the same batch, sequence length and dtype; forward + backward.

    python benchmarks/bench_encoder.py --device cpu --threads 1 --configs minilm
    python benchmarks/bench_encoder.py --device cuda --modes fp32,bf16,bf16+compile --json enc.json

Configs: "minilm" loads ../shared/models/all-MiniLM-L6-v2 into both (random weights of
its shape when the folder is absent); "bert-base" builds our model from BertConfig()
and loads its state dict into transformers.BertModel(transformers.BertConfig()) (the
key names are the same). Attention: our "math" against HF "eager", "sdpa" against
"sdpa". Modes: fp32, bf16 (autocast, CUDA only), and either with "+compile" (torch.compile
of both models; the compile happens in the warm-up steps, which are not timed).
Both models are in train mode (dropout on), as in fine-tuning.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import MINILM, add_common_args, clock, environment, interleave, mfu, report, setup  # noqa: E402
from minbert import BertConfig, BertModel  # noqa: E402

HF_ATTN = {"math": "eager", "sdpa": "sdpa"}  # our name -> transformers' name for the same computation
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def build_pair(config: str, attn: str, device: torch.device):
    """(ours, hf): two models with identical float32 weights."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    if config == "minilm" and MINILM.exists():
        ours = BertModel.from_pretrained(str(MINILM), attn_implementation=attn)
        hf = transformers.BertModel.from_pretrained(str(MINILM), dtype=torch.float32, attn_implementation=HF_ATTN[attn])
    else:
        shape = MINILM_SHAPE if config == "minilm" else {}  # BertConfig() is BERT-base
        ours = BertModel(BertConfig(attn_implementation=attn, **shape))
        hf = transformers.BertModel(transformers.BertConfig(**shape, attn_implementation=HF_ATTN[attn]))
        hf.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(device).train(), hf.to(device).train()


def make_batch(config: BertConfig, batch: int, seq_len: int, ragged: bool, device: torch.device):
    """Random ids; with `ragged`, each row keeps a random length in [T/2, T] and pads the rest."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if ragged:
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g)
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        ids = ids * mask
    types = torch.zeros_like(ids)
    return ids.to(device), mask.to(device), types.to(device)


def train_flops(config: BertConfig, num_params: int, batch: int, seq_len: int) -> float:
    """FLOPs of one forward + backward: 6 per weight per token (2 forward, 4 backward) for
    the non-embedding weights, plus attention's Q K^T and A V, 12 L H T per token
    (bidirectional: all T keys for every query). As nanoGPT's estimate_mfu counts."""
    embed = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * config.hidden_size
    per_token = 6 * (num_params - embed) + 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return per_token * batch * seq_len


def step_fn(model, inputs, autocast):
    ids, mask, types = inputs

    def step():
        model.zero_grad(set_to_none=True)
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            loss = out.last_hidden_state.float().square().mean() + out.pooler_output.float().mean()
        loss.backward()
    return step


@torch.no_grad()
def max_difference(ours, hf, inputs) -> float:
    """Same weights, same input, eval mode: the two encoders should agree to float32 rounding."""
    ours.eval(), hf.eval()
    ids, mask, types = inputs
    a = ours(ids, mask, types).last_hidden_state
    b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    ours.train(), hf.train()
    return (a - b)[mask.bool()].abs().max().item()  # padded positions are not compared


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="minilm,bert-base", help="comma-separated: minilm, bert-base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--attn", default="math,sdpa", help="comma-separated: math, sdpa")
    ap.add_argument("--modes", default=None, help="comma-separated: fp32, bf16, fp32+compile, bf16+compile "
                                                  "(default: fp32 on CPU; fp32,bf16,bf16+compile on CUDA)")
    ap.add_argument("--ragged", action="store_true", help="pad each row to a random length in [T/2, T]")
    add_common_args(ap)
    args = ap.parse_args()
    device = setup(args)
    modes = (args.modes or ("fp32,bf16,bf16+compile" if device.type == "cuda" else "fp32")).split(",")
    if device.type != "cuda" and any(m.startswith("bf16") for m in modes):
        sys.exit("bf16 autocast is measured on CUDA only; on CPU use --modes fp32 or fp32+compile")

    rows = []
    for config in args.configs.split(","):
        for attn in args.attn.split(","):
            ours, hf = build_pair(config, attn, device)
            inputs = make_batch(ours.config, args.batch, args.seq_len, args.ragged, device)
            diff = max_difference(ours, hf, inputs)
            flops = train_flops(ours.config, ours.num_parameters(), args.batch, args.seq_len)
            for mode in modes:
                bf16 = mode.startswith("bf16")
                autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
                models = {"minbert": ours, "transformers": hf}
                if mode.endswith("+compile"):
                    models = {k: torch.compile(m) for k, m in models.items()}
                ms = interleave({k: step_fn(m, inputs, autocast) for k, m in models.items()},
                                device, args.warmup, args.steps, args.rounds)
                for impl in models:
                    t = ms[impl]
                    rows.append({"config": config, "attn": f"{attn} / {HF_ATTN[attn]}", "mode": mode, "impl": impl,
                                 "median wall ms/step": f"{t.wall_ms:.1f}", "min CPU ms/step": f"{t.cpu_ms:.1f}",
                                 "tokens/s": f"{args.batch * args.seq_len / t.wall_ms * 1e3:,.0f}",
                                 "MFU": mfu(flops, t.wall_ms, device, bf16),
                                 "ours/HF": f"{ms['transformers'].ms / t.ms:.3f}x" if impl == "minbert" else "",
                                 "max abs diff": f"{diff:.1e}"})
            del ours, hf
    title = (f"Encoder forward+backward, batch {args.batch} x seq {args.seq_len}{' (ragged)' if args.ragged else ''}; "
             f"ours/HF = throughput ratio from {clock(device)} time, > 1: ours faster")
    columns = ["config", "attn", "mode", "impl", "median wall ms/step", "min CPU ms/step", "tokens/s", "MFU",
               "ours/HF", "max abs diff"]
    report(title, environment(device), rows, columns, args.json)


if __name__ == "__main__":
    main()
