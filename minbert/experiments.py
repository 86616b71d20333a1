"""Every run is an `Experiment`: one dataclass holds all defaults, each preset changes a
few fields, and the command line overrides any field (train_multitask.py).

The presets are the rows of the CS224N multitask table (Cortes, Hsieh & Fu, "An
Exploration of Fine-Tuning Techniques on minBERT Optimizations"), with the paper's
dev scores beside them, and "glue", the run_glue-style single-task fine-tuning used
for the M-FAC comparison.

Every check of a field lives in `Experiment.validate`, which `__post_init__` calls: a run
started from Python (`Trainer(preset("gse", lr=...))`) is checked exactly as one started
from the command line, and a bad value stops before any work with one line.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from minbert.data import TASKS
from minbert.heads import HEADS, check_head, heads_reading
from minbert.optim import MFAC
from minbert.pooling import POOLERS
from minbert.run.compat import upgrade_config
from minbert.run.paths import default_model
from minbert.smart import DEFAULTS as SMART
from minbert.smart import READINGS as SMART_READINGS
from minbert.updates import UPDATES

DEFAULT_MODEL = str(default_model())  # $MINBERT_SHARED/models/all-MiniLM-L6-v2, else ../shared/... (run/paths.py)
# The allowed values of every enum-like field (name -> what it means, or the registry itself), for
# the checks and --help. The registries (UPDATES, POOLERS) are the dicts themselves, so an entry
# added there is allowed and listed here at once; HEADS are checked by heads.check_head.
CHOICES = {
    "update": UPDATES,
    "pcgrad_reduction": {"sum": "Yu et al.'s update: the projected gradients summed",
                         "mean": "their mean (the student paper's GSE)"},
    "pair_input": {"siamese": "the two sentences encoded apart (Sentence-BERT)",
                   "cross": "one segment [CLS] A [SEP] B [SEP]"},
    "pooling": POOLERS,
    "optim": {"adamw": "AdamW (minbert/optim/adamw.py)", "mfac": "M-FAC (minbert/optim/mfac.py)"},
    "lr_schedule": {"constant": "", "linear": "linear decay to 0 (run_glue's default)"},
    "results_from": {"best": "the best evaluation (by the overall score)", "final": "the last evaluation (run_glue)"},
    "bad_rows": {"skip": "counted and named in a warning", "raise": "stop at the first"},
    "nonfinite": {"stop": "stop the run", "skip": "skip the step, counted"},
    "smart_reading": SMART_READINGS,
    "bf16": {"auto": "bf16 autocast on CUDA, float32 on the CPU",
             "on": "bf16 autocast on every device, the CPU too (CUDA's arithmetic, emulated)",
             "off": "float32 everywhere"},
}
ADAMW_ARGS = {"betas", "eps", "foreach", "compile", "fused"}
MFAC_ARGS = set(inspect.signature(MFAC).parameters) - {"params"} | {"only"}
# Fields that say where and how fast a run goes, not what it computes: they may change when
# a run is resumed (a longer --max_steps continues it). Every other field must match the
# config.json of the run in the output folder (checkpoint.check_run_folder).
RESUMABLE = ("max_steps", "deadline", "output_dir", "overwrite_output_dir", "device", "fast", "compile",
             "pad_to_multiple_of",
             "eval_batch_size", "logging_steps", "save_checkpoints", "nonfinite", "bad_rows")


def default_head(task: str, pair_input: str) -> str:
    """Two-sentence tasks encoded apart compare two vectors (concat); everything else is linear."""
    return "concat" if TASKS[task].pair and pair_input == "siamese" else "linear"


@dataclass
class Experiment:
    name: str = "baseline"
    # what is learned
    tasks: tuple[str, ...] = ("sst", "quora", "sts")
    heads: dict[str, str] = field(default_factory=dict)  # task -> head name; unset tasks get default_head
    pair_input: str = "siamese"  # siamese: two sentences encoded apart; cross: [CLS] A [SEP] B [SEP]
    pooling: str = "cls"  # cls | mean | max | pooler (BERT's tanh pooler on [CLS])
    binary_logit: bool = True  # binary tasks: one logit + BCE (paper); False: two logits + CE (run_glue)
    head_dropout: float = 0.1
    # how it is updated
    update: str = "separate"  # separate | summed | pcgrad | gse: how the losses make an update (updates.py)
    pcgrad_reduction: str = "sum"  # how PCGrad combines the projected task gradients: sum | mean
    smart: bool = False
    smart_weight: float = SMART["weight"]  # lambda
    smart_sigma: float = SMART["sigma"]
    smart_eta: float = SMART["eta"]
    smart_eps: float = SMART["eps"]
    smart_steps: int = SMART["steps"]
    smart_reading: str = "library"  # library | paper | mt-dnn: how the perturbation is found (minbert/smart.py)
    bregman_weight: float = 0.0  # mu; > 0 adds the Bregman proximal-point term (momentum teacher)
    bregman_beta: float = 0.99
    optim: str = "adamw"  # adamw | mfac (MFAC, the model cards' spelling, is read as mfac)
    optim_args: dict = field(default_factory=dict)  # extra optimizer arguments, e.g. {"num_grads": 512}
    lr: float = 1e-5
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | linear (decay to 0, run_glue's default)
    warmup_ratio: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping (the paper clips nothing; run_glue clips at 1.0)
    # how long
    epochs: float = 10
    batch_size: int = 8
    iters_mult: float = 1  # iterations per epoch = iters_mult * smallest training set // batch_size
    steps_per_epoch: int = 0  # 0: derive it as above; -1: one pass over the (first) task's training set
    max_steps: int = 0  # > 0 caps the run (smoke tests)
    deadline: str = ""  # ISO time (UTC unless it says): stop there, evaluate, checkpoint; "" none
    max_length: int = 128
    bucket_window: int = 0  # > 1: batches of similar length, sorted within windows of this many (batches.py)
    pad_to_multiple_of: int = 0  # > 0: pad each batch's length up to a multiple of this (fixed shapes for CUDA graphs)
    # evaluation and output
    eval_per_epoch: int = 1
    eval_batch_size: int = 64
    max_eval_examples: int = 0  # > 0 scores only the first N examples of each dev set (smoke tests)
    results_from: str = "best"  # which evaluation the eval_* keys of all_results.json hold: best | final
    logging_steps: int = 10  # every N steps each task's loss goes to log.jsonl
    save_checkpoints: bool = True
    output_dir: str = ""  # "": runs/<name>
    overwrite_output_dir: bool = False  # a folder holding another run: start afresh (run_glue's name)
    # where things are, and how fast they run
    model: str = DEFAULT_MODEL
    data_dir: str = "data"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fast: bool = False  # SDPA attention and multi-tensor AdamW instead of the readable code (fastpaths.py)
    bf16: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU | on: everywhere | off (evaluation.autocast)
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
        """Every check of every field; a bad value raises one ValueError naming it."""
        def bad(msg):
            raise ValueError(f"experiment {self.name!r}: {msg}")
        self.optim = str(self.optim).lower()  # --optim MFAC, as the M-FAC model cards write it
        if isinstance(self.bf16, bool):  # from Python: bf16=True asks for it on every device, False for none
            self.bf16 = "on" if self.bf16 else "off"
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                bad(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        self.tasks = tuple(self.tasks)
        for t in self.tasks:
            if t not in TASKS:
                bad(f"unknown task {t!r}; known tasks: {', '.join(TASKS)}")
        self.heads = {t: self.heads.get(t) or default_head(t, self.pair_input) for t in self.tasks}
        for t, h in self.heads.items():
            try:
                check_head(h, t)
            except ValueError as e:
                bad(str(e))
            # A pair task's head reads two vectors when the sentences are encoded apart, else one.
            if TASKS[t].pair and HEADS[h].segments != (2 if self.pair_input == "siamese" else 1):
                bad(f"head {h!r} does not fit pair_input={self.pair_input} for {t}: use "
                    f"{' / '.join(heads_reading(1))} with cross, or {' / '.join(heads_reading(2))} with siamese")
        for name in ("epochs", "batch_size", "eval_per_epoch", "max_length", "eval_batch_size", "iters_mult",
                     "logging_steps"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "max_grad_norm", "warmup_ratio", "max_steps", "max_eval_examples",
                     "bucket_window", "pad_to_multiple_of", "smart_weight", "bregman_weight"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps_per_epoch < -1 or self.smart_steps < 1 or self.init_seed < -1 or self.data_seed < -1:
            bad(f"steps_per_epoch must be >= -1, smart_steps >= 1, init_seed and data_seed >= -1; got "
                f"{self.steps_per_epoch}, {self.smart_steps}, {self.init_seed}, {self.data_seed}")
        if not (0 <= self.head_dropout < 1 and 0 <= self.bregman_beta < 1):
            bad(f"head_dropout and bregman_beta must be in [0, 1), got {self.head_dropout} and {self.bregman_beta}")
        if self.deadline:
            try:
                self.deadline_seconds()
            except ValueError:
                bad(f"deadline {self.deadline!r} is not an ISO time such as 2026-12-01T09:30:00+00:00")
        known = ADAMW_ARGS if self.optim == "adamw" else MFAC_ARGS
        unknown = sorted(set(self.optim_args) - known)
        if unknown:
            bad(f"unknown {'AdamW' if self.optim == 'adamw' else 'M-FAC'} argument(s) {unknown} in optim_args; "
                f"known: {', '.join(sorted(known))} (lr and weight_decay have their own flags)")

    def deadline_seconds(self) -> float | None:
        """The deadline as time.time() counts (seconds since 1970), or None; a time without a zone is UTC."""
        if not self.deadline:
            return None
        when = datetime.fromisoformat(self.deadline)
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        """A config.json's fields, this version's or an earlier one's (run/compat.py), -> the Experiment."""
        return cls.from_fields(upgrade_config(d))

    @classmethod
    def from_fields(cls, d: dict) -> "Experiment":
        """The fields given (Python values: bf16=True means on every device), defaults for the
        rest; an unknown field is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown experiment fields: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: Path):
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _gse(**kw):
    # "We first update our parameters using the mean of the adjusted gradients for each loss, and
    # immediately after, re-update them using the combined loss" (student paper, section 5.3, 1c).
    return dict(update="gse", pcgrad_reduction="mean", **kw)


# name -> (field overrides, the paper's dev SST / QQP / STS / overall; None where it has none)
PRESETS: dict[str, tuple[dict, tuple | None]] = {
    "baseline": (dict(update="separate"), (0.512, 0.731, 0.361, 0.641)),
    "multitask": (dict(update="summed"), (0.511, 0.727, 0.341, 0.636)),
    # "update the model using the adjusted gradients" (section 5.3, 1b) names no mean: Yu et al.'s
    # Algorithm 1 sums the projected gradients, so the pcgrad row keeps the sum.
    "pcgrad": (dict(update="pcgrad", pcgrad_reduction="sum"), (0.510, 0.718, 0.378, 0.639)),
    "gse": (_gse(), (0.507, 0.748, 0.353, 0.644)),
    "cos-emb": (_gse(heads={"sts": "cos-emb"}), (0.510, 0.706, 0.103, 0.589)),
    "cos-d": (_gse(heads={"sts": "cos-d"}), (0.508, 0.730, 0.185, 0.610)),
    "cos-2d1": (_gse(heads={"sts": "cos-2d1"}), (0.510, 0.737, 0.365, 0.643)),
    "cos-2d1-mean": (_gse(heads={"sts": "cos-2d1"}, pooling="mean"), (0.499, 0.747, 0.357, 0.641)),
    # SMART's perturbation is smart-pytorch's (smart_reading="library"): "To implement SMART, we
    # utilize the framework of a preexisting library (Jiang et al., 2020), where we set the parameters
    # as lambda = 5, eta = 10^-3, epsilon = 10^-5, and sigma = 10^-5" (section 4.4). These are the four
    # settings of smart-pytorch 0.0.4's SMARTLoss (weight, step_size, epsilon, noise_var).
    # "To each individual task's loss, we add a regularization loss" (section 5.3.4): SMART on the
    # baseline's separate updates. Section 4.4's other reading, the losses and regularisers
    # "combined" into one training loss, is --preset smart --update summed.
    "smart": (dict(update="separate", smart=True), (0.487, 0.750, 0.376, 0.642)),
    "smart-gse": (_gse(smart=True), None),  # the paper ran out of GPU memory
    "gse-3x": (_gse(iters_mult=3), (0.489, 0.762, 0.362, 0.644)),
    "cos-2d1-3x": (_gse(heads={"sts": "cos-2d1"}, iters_mult=3), (0.499, 0.761, 0.379, 0.650)),
    "smart-3x": (dict(update="separate", smart=True, iters_mult=3), (0.507, 0.758, 0.376, 0.651)),
    # run_glue-style single-task fine-tuning (M-FAC model cards): cross-encoded pairs, BERT's
    # pooler + Linear, two-class CE, linear decay, batch 32, 5 epochs, lr 1e-4; Hugging Face's
    # Trainer clips the gradient norm at 1.0 by default, and run_glue's --do_eval scores the
    # final model (results_from="final"; the best evaluation is kept under best_eval_*).
    "glue": (dict(tasks=("mrpc",), update="summed", pair_input="cross", pooling="pooler",
                  binary_logit=False, lr=1e-4, lr_schedule="linear", epochs=5, batch_size=32,
                  steps_per_epoch=-1, eval_per_epoch=1, max_grad_norm=1.0, results_from="final"), None),
}


def presets_using(field: str, value) -> list[str]:
    """The presets whose runs have `field` == value, set by the preset or left at the default:
    presets_using("update", "summed") -> ["multitask", "glue"]."""
    default = {f.name: f.default for f in dataclasses.fields(Experiment)}[field]
    return [name for name, (fields, _) in PRESETS.items() if fields.get(field, default) == value]


def preset(name: str, /, **overrides) -> Experiment:
    """The preset's fields, then the overrides (heads are merged task by task); unknown names
    and fields are errors."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {"name": name, **PRESETS[name][0]}
    heads = {**fields.pop("heads", {}), **(overrides.pop("heads", None) or {})}
    return Experiment.from_fields({**fields, **overrides, "heads": heads})
