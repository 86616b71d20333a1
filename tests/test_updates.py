"""Trainer.update, the one place where the presets differ (CS224N paper, section 5.3): each
update kind takes its defining optimizer steps, with the gradients that kind is defined by.

Dropout is switched off, so a loss is a function of the weights and the batch alone: each
optimizer step the update takes is recorded (the weights before it and the gradients it
applies), and the gradients are recomputed by hand at those weights.
    separate  one step per task, each on that task's loss alone (the baseline)
    summed    one step on L_sst + L_quora + L_sts
    pcgrad    one step on the projected task gradients, summed (Yu et al., Alg. 1)
    gse       a PCGrad step with the mean of the projected gradients, then a step on the
              summed loss recomputed at the new weights (student paper, section 5.3, 1c)
and each preset names the update, reduction and SMART setting the paper gives it."""
import pytest
import torch

from conftest import tiny_experiment
from minbert.experiments import PRESETS, preset
from minbert.pcgrad import pcgrad
from minbert.trainer import Trainer, steps_per_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer_without_dropout(update, tiny_model, tiny_data, tmp_path, **kw) -> Trainer:
    exp = tiny_experiment("baseline", tiny_model, tiny_data, tmp_path, update=update, head_dropout=0.0,
                          max_grad_norm=0.0, **kw)
    trainer = Trainer(exp, quiet=True)
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_p"):  # attention's dropout on the probabilities
            m.dropout_p = 0.0
    return trainer


def record_steps(trainer: Trainer) -> list[dict]:
    """Wrap each optimizer's step(): every call records the weights before it and the gradients."""
    steps = []
    for opt in trainer.optimizers:
        original = opt.step

        def step(*args, _original=original, **kwargs):
            steps.append({"weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                          "grads": {n: None if p.grad is None else p.grad.detach().clone()
                                    for n, p in trainer.model.named_parameters()}})
            return _original(*args, **kwargs)
        opt.step = step
    return steps


def grads_by_hand(trainer: Trainer, weights: dict, losses_fn) -> list[dict]:
    """At `weights`: the gradient of each loss losses_fn() returns, as {name: grad or None}."""
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            p.copy_(weights[n])
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    out = []
    for loss in losses_fn():
        gs = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
        out.append({n: g for (n, _), g in zip(named, gs)})
    return out


def task_losses(trainer: Trainer, batches: dict):
    return lambda: [trainer.task_loss(t, b) for t, b in batches.items()]


def assert_grads(applied: dict, expected: dict, what: str, names=None):
    for n in names or expected:
        e, a = expected[n], applied[n]
        if e is None:
            assert a is None or not a.any(), f"{what}: {n} got a gradient where none belongs"
            continue
        assert a is not None, f"{what}: {n} got no gradient"
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-6), \
            f"{what}: the gradient applied to {n} is not the one this update is defined by " \
            f"(max difference {(a - e).abs().max():.3g})"


def run_update(update, tiny_model, tiny_data, tmp_path, **kw):
    trainer = trainer_without_dropout(update, tiny_model, tiny_data, tmp_path, **kw)
    batches = {t: trainer.train_batch(t, 0) for t in trainer.exp.tasks}
    steps = record_steps(trainer)
    trainer.update(0)
    return trainer, batches, steps


def summed(grads: list[dict]) -> dict:
    return {n: (None if all(g[n] is None for g in grads) else
                sum(g[n] for g in grads if g[n] is not None)) for n in grads[0]}


def test_separate_update_steps_once_per_task_on_its_own_loss(tiny_model, tiny_data, tmp_path):
    trainer, batches, steps = run_update("separate", tiny_model, tiny_data, tmp_path)
    tasks = list(batches)
    assert len(steps) == len(tasks), \
        f"update='separate' (the baseline) took {len(steps)} optimizer steps for {len(tasks)} tasks: " \
        f"it steps once per task, one task after another"
    for k, (task, step) in enumerate(zip(tasks, steps)):
        def loss_k(t=task):
            return [trainer.task_loss(t, batches[t])]
        expected = grads_by_hand(trainer, step["weights"], loss_k)[0]
        assert_grads(step["grads"], expected, f"update='separate', step {k + 1} (task {task}): "
                                              f"a step on this task's loss alone, at the weights the earlier tasks left")


def test_summed_update_is_one_step_on_the_summed_loss(tiny_model, tiny_data, tmp_path):
    trainer, batches, steps = run_update("summed", tiny_model, tiny_data, tmp_path)
    assert len(steps) == 1, f"update='summed' took {len(steps)} optimizer steps: it takes one, on the summed loss"
    expected = summed(grads_by_hand(trainer, steps[0]["weights"], task_losses(trainer, batches)))
    assert_grads(steps[0]["grads"], expected, "update='summed': one step on L_sst + L_quora + L_sts")


def pcgrad_by_hand(trainer: Trainer, weights: dict, batches: dict, reduction: str) -> dict:
    per_task = grads_by_hand(trainer, weights, task_losses(trainer, batches))
    shared = [n for n, _ in trainer.model.named_parameters() if n.startswith("bert.")]
    filled = [[g[n] if g[n] is not None else torch.zeros_like(weights[n]) for n in shared] for g in per_task]
    generator = torch.Generator().manual_seed(trainer.exp.seed * 7919 + 0)  # the task order of step 0
    expected = summed(per_task)  # the heads: each only in its own task's loss
    scale = 1.0 / len(per_task) if reduction == "mean" else 1.0
    expected = {n: (None if g is None else g * scale) for n, g in expected.items()}
    projected = pcgrad(filled, generator, reduction)
    expected.update({n: (None if all(g[n] is None for g in per_task) else pc)  # no task reaches it: no gradient
                     for n, pc in zip(shared, projected)})
    return expected


@pytest.mark.parametrize("update,reduction", [("pcgrad", "sum"), ("pcgrad", "mean")])
def test_pcgrad_update_steps_on_the_projected_task_gradients(update, reduction, tiny_model, tiny_data, tmp_path):
    trainer, batches, steps = run_update(update, tiny_model, tiny_data, tmp_path, pcgrad_reduction=reduction)
    assert len(steps) == 1, f"update='pcgrad' took {len(steps)} optimizer steps: it takes one, on the projected gradients"
    expected = pcgrad_by_hand(trainer, steps[0]["weights"], batches, reduction)
    plain = summed(grads_by_hand(trainer, steps[0]["weights"], task_losses(trainer, batches)))
    assert any(not torch.allclose(expected[n], plain[n]) for n in expected
               if n.startswith("bert.") and expected[n] is not None), \
        "the tiny tasks' gradients do not conflict: this test would not tell PCGrad from the summed loss"
    assert_grads(steps[0]["grads"], expected, f"update='pcgrad' (pcgrad_reduction={reduction!r}): the encoder's "
                                              f"gradient is the projected task gradients combined (Alg. 1, line 8)")


def test_gse_update_is_a_pcgrad_step_then_a_step_on_the_summed_loss(tiny_model, tiny_data, tmp_path):
    trainer, batches, steps = run_update("gse", tiny_model, tiny_data, tmp_path, pcgrad_reduction="mean")
    assert len(steps) == 2, \
        f"update='gse' took {len(steps)} optimizer steps: it takes two, a PCGrad step, then one on the summed loss"
    first = pcgrad_by_hand(trainer, steps[0]["weights"], batches, "mean")
    assert_grads(steps[0]["grads"], first, "update='gse', first step: the mean of the projected task gradients")
    assert any(not torch.equal(steps[0]["weights"][n], steps[1]["weights"][n]) for n in first), \
        "update='gse': the second step must start from the weights the PCGrad step left"
    second = summed(grads_by_hand(trainer, steps[1]["weights"], task_losses(trainer, batches)))
    assert_grads(steps[1]["grads"], second, "update='gse', second step: the summed loss, recomputed at the weights "
                                            "the PCGrad step left")


def test_smart_update_adds_the_smoothness_term_to_each_task_loss(tiny_model, tiny_data, tmp_path):
    plain = trainer_without_dropout("separate", tiny_model, tiny_data, tmp_path / "plain")
    smart = trainer_without_dropout("separate", tiny_model, tiny_data, tmp_path / "smart", smart=True)
    batch = plain.train_batch("sst", 0)
    torch.manual_seed(0)
    without = plain.task_loss("sst", batch)
    torch.manual_seed(0)
    with_smart = smart.task_loss("sst", batch)
    assert with_smart.item() > without.item(), \
        f"smart=True: the task loss {with_smart.item():.6g} should be the plain loss {without.item():.6g} " \
        f"plus smart_weight * the smoothness term R_s (eq. 3), which is > 0 here"


# what each preset changes (student paper, section 5.3): its update kind, SMART, the STS head, the
# pooling and the updates per epoch; GSE takes the mean of the projected gradients, PCGrad their sum
GSE = dict(update="gse", pcgrad_reduction="mean")
PAPER_PRESETS = {
    "baseline": dict(update="separate", smart=False), "multitask": dict(update="summed", smart=False),
    "pcgrad": dict(update="pcgrad", pcgrad_reduction="sum", smart=False), "gse": dict(GSE, smart=False),
    "cos-emb": dict(GSE, heads={"sts": "cos-emb"}), "cos-d": dict(GSE, heads={"sts": "cos-d"}),
    "cos-2d1": dict(GSE, heads={"sts": "cos-2d1"}, pooling="cls"),
    "cos-2d1-mean": dict(GSE, heads={"sts": "cos-2d1"}, pooling="mean"),
    "smart": dict(update="separate", smart=True, iters_mult=1), "smart-gse": dict(GSE, smart=True),
    "gse-3x": dict(GSE, smart=False, iters_mult=3), "cos-2d1-3x": dict(GSE, heads={"sts": "cos-2d1"}, iters_mult=3),
    "smart-3x": dict(update="separate", smart=True, iters_mult=3),
    "glue": dict(update="summed", tasks=("mrpc",), pooling="pooler"),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_takes_its_update(name):
    exp = preset(name)
    for field, value in PAPER_PRESETS[name].items():
        got = getattr(exp, field)
        if field == "heads":
            got = {t: h for t, h in got.items() if t in value}
        assert got == value, f"preset {name!r} should train with {field}={value!r} (section 5.3); it has {got!r}"


def test_iters_mult_multiplies_the_updates_per_epoch():
    sizes = {"sst": 800, "quora": 5000, "sts": 600}
    once = steps_per_epoch(preset("gse"), sizes, 8)
    assert once == 600 // 8, f"an epoch of the paper's presets is one pass over the smallest set: {once} updates"
    thrice = steps_per_epoch(preset("gse-3x"), sizes, 8)
    assert thrice == 3 * once, f"iters_mult=3 (the -3x presets) takes three times the updates per epoch: {thrice}"
