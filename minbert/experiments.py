"""Every run is an `Experiment`: one dataclass holds all defaults, each preset changes a
few fields, and the command line overrides any field (train_multitask.py).

The presets are the rows of the CS224N multitask table (Cortes, Hsieh & Fu, "An
Exploration of Fine-Tuning Techniques on minBERT Optimizations"), with the paper's
dev scores beside them, and "glue", the run_glue-style single-task fine-tuning used
for the M-FAC comparison.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = str(Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2")
UPDATES = ("separate", "summed", "pcgrad", "gse")


@dataclass
class Experiment:
    name: str = "baseline"
    # what is learned
    tasks: tuple[str, ...] = ("sst", "quora", "sts")
    heads: dict[str, str] = field(default_factory=lambda: {"sst": "linear", "quora": "concat", "sts": "concat"})
    pair_input: str = "siamese"  # siamese: two sentences encoded apart; cross: [CLS] A [SEP] B [SEP]
    pooling: str = "cls"  # cls | mean | max | pooler (BERT's tanh pooler on [CLS])
    binary_logit: bool = True  # binary tasks: one logit + BCE (paper); False: two logits + CE (run_glue)
    head_dropout: float = 0.1
    # how it is updated
    update: str = "separate"  # separate: one step per task; summed: one step on the sum; pcgrad; gse
    smart: bool = False
    smart_weight: float = 5.0  # lambda
    smart_sigma: float = 1e-5
    smart_eta: float = 1e-3
    smart_eps: float = 1e-5
    smart_steps: int = 1
    bregman_weight: float = 0.0  # mu; > 0 adds the Bregman proximal-point term (momentum teacher)
    bregman_beta: float = 0.99
    optim: str = "adamw"  # adamw | mfac
    optim_args: dict = field(default_factory=dict)  # extra optimizer arguments, e.g. {"num_grads": 512}
    lr: float = 1e-5
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | linear (decay to 0, run_glue's default)
    warmup_ratio: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping (the paper clips nothing)
    # how long
    epochs: float = 10
    batch_size: int = 8
    iters_mult: float = 1  # iterations per epoch = iters_mult * smallest training set // batch_size
    steps_per_epoch: int = 0  # 0: derive it as above; -1: one pass over the (first) task's training set
    max_steps: int = 0  # > 0 caps the run (smoke tests)
    max_length: int = 128
    bucket_window: int = 0  # > 1: batches of similar length, sorted within windows of this many (batches.py)
    # evaluation and output
    eval_per_epoch: int = 1
    eval_batch_size: int = 64
    max_eval_examples: int = 0  # > 0 caps each dev set (smoke tests)
    save_checkpoints: bool = True
    output_dir: str = ""  # "": runs/<name>
    # where things are
    model: str = DEFAULT_MODEL
    data_dir: str = "data"
    attn_implementation: str = "sdpa"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA; CPU runs stay in float32
    compile: bool = False  # torch.compile each encoder layer and AdamW's update (compiling takes a minute)
    bad_rows: str = "skip"  # what to do with malformed data rows: skip (counted, logged) | raise
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop | skip (the step, counted)
    # randomness: seed drives everything not set apart; init_seed the new heads, data_seed the order
    seed: int = 11711
    init_seed: int = -1  # -1: use seed
    data_seed: int = -1  # -1: use seed

    def __post_init__(self):
        self.validate()

    def validate(self):
        from minbert.data import TASKS
        from minbert.heads import HEADS
        from minbert.pooling import POOLERS
        def bad(msg):
            raise ValueError(f"experiment {self.name!r}: {msg}")
        self.tasks = tuple(self.tasks)
        for t in self.tasks:
            if t not in TASKS:
                bad(f"unknown task {t!r}; known tasks: {', '.join(TASKS)}")
            if t not in self.heads:
                self.heads[t] = "concat" if TASKS[t].pair and self.pair_input == "siamese" else "linear"
        self.heads = {t: self.heads[t] for t in self.tasks}
        for t, h in self.heads.items():
            if h not in HEADS:
                bad(f"unknown head {h!r} for {t}; choose one of {', '.join(HEADS)}")
            # Two-sentence heads need the sentences encoded apart; "linear" needs one segment.
            if TASKS[t].pair and (h != "linear") != (self.pair_input == "siamese"):
                bad(f"head {h!r} does not fit pair_input={self.pair_input} for {t}: use linear with cross, "
                    f"or concat / cos-* with siamese")
        if self.update not in UPDATES:
            bad(f"unknown update {self.update!r}; choose one of {', '.join(UPDATES)}")
        if self.pooling not in (*POOLERS, "pooler"):
            bad(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLERS)}, pooler")
        if self.pair_input not in ("siamese", "cross"):
            bad(f"pair_input must be siamese or cross, not {self.pair_input!r}")
        if self.optim not in ("adamw", "mfac"):
            bad(f"unknown optimizer {self.optim!r}; choose adamw or mfac")
        if self.lr_schedule not in ("constant", "linear"):
            bad(f"lr_schedule must be constant or linear, not {self.lr_schedule!r}")
        if self.bad_rows not in ("skip", "raise") or self.nonfinite not in ("stop", "skip"):
            bad("bad_rows must be skip|raise and nonfinite stop|skip")
        for name in ("epochs", "batch_size", "eval_per_epoch", "max_length", "eval_batch_size", "iters_mult"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr < 0 or self.weight_decay < 0:
            bad(f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}")
        if self.bucket_window < 0:
            bad(f"bucket_window must be >= 0, got {self.bucket_window}")

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown experiment fields: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: Path):
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _gse(**kw):
    return dict(update="gse", **kw)


# name -> (field overrides, the paper's dev SST / QQP / STS / overall; None where it has none)
PRESETS: dict[str, tuple[dict, tuple | None]] = {
    "baseline": (dict(update="separate"), (0.512, 0.731, 0.361, 0.641)),
    "multitask": (dict(update="summed"), (0.511, 0.727, 0.341, 0.636)),
    "pcgrad": (dict(update="pcgrad"), (0.510, 0.718, 0.378, 0.639)),
    "gse": (_gse(), (0.507, 0.748, 0.353, 0.644)),
    "cos-emb": (_gse(heads={"sts": "cos-emb"}), (0.510, 0.706, 0.103, 0.589)),
    "cos-d": (_gse(heads={"sts": "cos-d"}), (0.508, 0.730, 0.185, 0.610)),
    "cos-2d1": (_gse(heads={"sts": "cos-2d1"}), (0.510, 0.737, 0.365, 0.643)),
    "cos-2d1-mean": (_gse(heads={"sts": "cos-2d1"}, pooling="mean"), (0.499, 0.747, 0.357, 0.641)),
    "smart": (dict(update="separate", smart=True), (0.487, 0.750, 0.376, 0.642)),
    "smart-gse": (_gse(smart=True), None),  # the paper ran out of GPU memory
    "gse-3x": (_gse(iters_mult=3), (0.489, 0.762, 0.362, 0.644)),
    "cos-2d1-3x": (_gse(heads={"sts": "cos-2d1"}, iters_mult=3), (0.499, 0.761, 0.379, 0.650)),
    "smart-3x": (dict(update="separate", smart=True, iters_mult=3), (0.507, 0.758, 0.376, 0.651)),
    # run_glue-style single-task fine-tuning (M-FAC model cards): cross-encoded pairs,
    # BERT's pooler + Linear, two-class CE, linear decay, batch 32, 5 epochs, lr 1e-4.
    "glue": (dict(tasks=("mrpc",), heads={}, update="summed", pair_input="cross", pooling="pooler",
                  binary_logit=False, lr=1e-4, lr_schedule="linear", epochs=5, batch_size=32,
                  steps_per_epoch=-1, eval_per_epoch=1), None),
}


def preset(name: str, /, **overrides) -> Experiment:
    """The preset's fields, then the overrides; unknown names and fields are errors."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {"name": name, **PRESETS[name][0]}
    heads = {"sst": "linear", "quora": "concat", "sts": "concat"} if name != "glue" else {}
    heads.update(fields.pop("heads", {}))
    heads.update(overrides.pop("heads", {}) or {})
    return Experiment.from_dict({**fields, **overrides, "heads": heads})
