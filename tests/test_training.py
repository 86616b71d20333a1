"""The training loop (minbert/trainer.py) and its CLI (train_multitask.py) on the tiny
model and data of conftest.py: every preset runs and writes its run folder, every update
kind lowers the loss on a fixed batch, a resumed run ends bit-for-bit where an
uninterrupted one does, the seeds do what they say, and bad arguments stop the CLI
before any work."""
import json
import math

import pytest
import torch

import train_multitask
from conftest import tiny_experiment
from minbert.batches import Bucketed
from minbert.evaluation import evaluate
from minbert.experiments import PRESETS, preset
from minbert.run import folder
from minbert.run.build import load_run, read_data
from minbert.trainer import Trainer

MULTITASK_KEYS = {"eval_sst_accuracy", "eval_quora_accuracy", "eval_quora_f1", "eval_sts_pearson",
                  "eval_sts_spearmanr", "eval_overall"}
MRPC_KEYS = {"eval_accuracy", "eval_f1", "eval_combined_score", "eval_overall"}
STSB_KEYS = {"eval_pearson", "eval_spearmanr", "eval_combined_score", "eval_overall"}
RUN_FILES = ("config.json", "log.jsonl", "eval_results.json", "all_results.json", "trainer_state.json",
             "best/model.safetensors")


pytestmark = pytest.mark.usefixtures("one_thread")


def read_json(path):
    return json.loads(path.read_text())


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------- every preset end to end

@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_trains_and_writes_run_folder(name, tiny_model, tiny_data, tmp_path):
    out = tmp_path / name
    exp = tiny_experiment(name, tiny_model, tiny_data, out, max_steps=2, max_eval_examples=8,
                          save_checkpoints=False)
    result = Trainer(exp, quiet=True).train()
    for f in RUN_FILES:
        assert (out / f).is_file(), f"{name}: no {f}"
    assert not list(out.glob("checkpoint-*"))  # save_checkpoints=False

    expected = MRPC_KEYS if name == "glue" else MULTITASK_KEYS
    evals = read_json(out / "eval_results.json")
    assert {k for k in evals if k.startswith("eval_")} == expected
    for k in expected:
        low = -1.0 if k.endswith(("pearson", "spearmanr")) else 0.0
        assert math.isfinite(evals[k]) and low <= evals[k] <= 1.0, (k, evals[k])
    assert read_json(out / "all_results.json").items() >= evals.items()
    assert result.items() >= evals.items()

    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 2 and state["best_step"] == 2  # the one evaluation is the best
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == state["log_history"]
    assert [e["step"] for e in log] == [2, 2]  # the loss at the last step, then its evaluation
    assert all(math.isfinite(v) for k, v in log[0].items() if k.startswith("loss"))
    # config.json is the resolved experiment: it rebuilds the same one
    assert type(exp).from_dict(read_json(out / "config.json")) == exp


def test_load_run_reproduces_best_metrics(tiny_model, tiny_data, tmp_path):
    exp = tiny_experiment("cos-2d1-mean", tiny_model, tiny_data, tmp_path, max_steps=2, max_eval_examples=8,
                          save_checkpoints=False)
    trained = Trainer(exp, quiet=True)
    trained.train()
    loaded = load_run(tmp_path, device="cpu")
    assert_same_weights(trained.model, loaded.model)
    evals = read_json(tmp_path / "eval_results.json")
    dev = read_data(loaded.exp, loaded.tokenizer, "dev", 8)
    scores = evaluate(loaded.model, dev, 8, loaded.tokenizer.pad_token_id, loaded.device)
    assert {f"eval_{k}": v for k, v in scores.items()} == {k: v for k, v in evals.items() if k.startswith("eval_")}


# ---------------------------------------------------------------- the updates learn

@pytest.mark.parametrize("update,smart", [("separate", False), ("summed", False), ("pcgrad", False),
                                          ("gse", False), ("separate", True)])
def test_loss_goes_down_on_a_fixed_batch(update, smart, tiny_model, tiny_data, tmp_path):
    exp = tiny_experiment("baseline", tiny_model, tiny_data, tmp_path, update=update, smart=smart,
                          lr=1e-3, head_dropout=0.0)
    trainer = Trainer(exp, quiet=True)
    first = trainer.update(0)  # update(step) draws batch `step` of each task: the same batch every time
    assert set(first) == {"sst", "quora", "sts"}
    for _ in range(20):
        last = trainer.update(0)
    # BERT's own dropout (0.1) stays on. Measured over 5 seeds: the sum falls to 0.18-0.45 of
    # its start (mostly STS's MSE, which starts near 17); ask for 0.6.
    assert sum(last.values()) < 0.6 * sum(first.values()), (first, last)


# ---------------------------------------------------------------- resuming is exact

RESUME_CASES = {
    # SMART noise and dropout (RNG), the momentum teacher, the PCGrad task order, a warmup+decay schedule
    "gse-smart-bregman": ("smart-gse", dict(bregman_weight=1.0, lr_schedule="linear", warmup_ratio=0.34)),
    # M-FAC's gradient window, Gram matrix and step count
    "mfac": ("multitask", dict(optim="mfac", optim_args={"num_grads": 4})),
    # length-bucketed batches: windows of 3 batches, the cut at step 4 falls inside the second
    "bucketed": ("baseline", dict(bucket_window=3)),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_matches_uninterrupted_run(case, tiny_model, tiny_data, tmp_path):
    check_resume_matches_uninterrupted_run(case, tiny_model, tiny_data, tmp_path, "cpu")


def check_resume_matches_uninterrupted_run(case, tiny_model, tiny_data, tmp_path, device):
    """Run A: 6 steps. Run B: cut off after 4, then C resumes it to 6. A and C must agree bit for bit."""
    name, kw = RESUME_CASES[case]
    common = dict(steps_per_epoch=2, eval_per_epoch=1, epochs=3, max_eval_examples=8, save_checkpoints=True,
                  device=device, **kw)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"

    a = Trainer(tiny_experiment(name, tiny_model, tiny_data, a_dir, max_steps=0, **common), quiet=True)
    assert all(isinstance(s, Bucketed) == (case == "bucketed") for s in a.streams.values())
    a.train()  # 6 steps, evaluated and checkpointed every 2
    b = Trainer(tiny_experiment(name, tiny_model, tiny_data, b_dir, max_steps=4, **common), quiet=True)
    b.train()  # cut off after step 4
    assert [p.name for p in folder.checkpoints(b_dir)] == ["checkpoint-4"]
    cost = torch.load(b_dir / "checkpoint-4" / "state.pt", weights_only=True)["cost"]
    c = Trainer(tiny_experiment(name, tiny_model, tiny_data, b_dir, max_steps=0, **common), quiet=True)
    result = c.train()
    assert result["train_steps"] == 2 and result["global_step"] == 6  # it resumed, it did not start again
    # the record covers both sessions: B's time up to its checkpoint, then C's
    assert 0 < cost["seconds"] < result["train_runtime"] and result["commit"] == ",".join(cost["commits"])
    assert result["update_ms"] * 6 > 1000 * cost["update_seconds"]
    # the same command once more: nothing to train, and the record is left as it was
    record = (b_dir / "all_results.json").read_text()
    again = Trainer(tiny_experiment(name, tiny_model, tiny_data, b_dir, max_steps=0, **common), quiet=True).train()
    assert again == read_json(b_dir / "all_results.json") and (b_dir / "all_results.json").read_text() == record

    assert_same_weights(a.model, c.model)
    if a.teacher is not None:
        assert_same_weights(a.teacher.module, c.teacher.module)
    assert read_json(a_dir / "eval_results.json") == read_json(b_dir / "eval_results.json")
    assert c.best == a.best
    # The same log, except the line B wrote when it stopped at step 4.
    cut_line = {"step", "epoch", "loss", "loss_sst", "loss_quora", "loss_sts", "lr"}
    assert [e for e in c.history if not (e["step"] == 4 and set(e) == cut_line)] == a.history
    assert [p.name for p in folder.checkpoints(b_dir)] == ["checkpoint-6"]  # only the latest is kept


# ---------------------------------------------------------------- seeds

def test_same_seeds_same_run(tiny_model, tiny_data, tmp_path):
    runs = []
    for k in range(2):
        exp = tiny_experiment("gse", tiny_model, tiny_data, tmp_path / str(k), max_steps=2, max_eval_examples=8,
                              save_checkpoints=False, seed=3)
        trainer = Trainer(exp, quiet=True)
        runs.append((trainer, trainer.train()))
    assert_same_weights(runs[0][0].model, runs[1][0].model)
    assert {k: v for k, v in runs[0][1].items() if k.startswith("eval_")} == \
           {k: v for k, v in runs[1][1].items() if k.startswith("eval_")}


def _trainer(tiny_model, tiny_data, tmp_path, **seeds):
    return Trainer(tiny_experiment("baseline", tiny_model, tiny_data, tmp_path, **seeds), quiet=True)


def _order(trainer, steps=4):
    return {t: [s.batch_indices(i) for i in range(steps)] for t, s in trainer.streams.items()}


def test_data_seed_sets_batch_order_only(tiny_model, tiny_data, tmp_path):
    base = _trainer(tiny_model, tiny_data, tmp_path, seed=1, data_seed=5)
    same = _trainer(tiny_model, tiny_data, tmp_path, seed=2, data_seed=5)
    other = _trainer(tiny_model, tiny_data, tmp_path, seed=1, data_seed=6)
    assert _order(base) == _order(same)  # seed does not touch the order when data_seed is set
    for t in base.streams:
        assert _order(base)[t] != _order(other)[t], t
    assert_same_weights(base.model, other.model)  # nor does data_seed touch the initial weights
    # and each task sees each of its examples once per pass, whatever the seed
    stream = other.streams["sst"]
    n = len(other.train_data["sst"])
    flat = [i for s in range(n // stream.batch_size) for i in stream.batch_indices(s)]
    assert sorted(flat) == list(range(n))


def test_init_seed_sets_head_init_only(tiny_model, tiny_data, tmp_path):
    base = _trainer(tiny_model, tiny_data, tmp_path, seed=1, init_seed=5)
    same = _trainer(tiny_model, tiny_data, tmp_path, seed=2, init_seed=5)
    other = _trainer(tiny_model, tiny_data, tmp_path, seed=1, init_seed=6)
    assert_same_weights(base.model, same.model)
    assert_same_weights(base.model.bert, other.model.bert)  # the pretrained encoder is loaded, not drawn
    for t, head in base.model.heads.items():
        assert not torch.equal(head.out.weight, other.model.heads[t].out.weight), t
    assert _order(base) == _order(other)
    # with neither set, seed drives both
    s1, s2 = _trainer(tiny_model, tiny_data, tmp_path, seed=1), _trainer(tiny_model, tiny_data, tmp_path, seed=2)
    assert _order(s1) != _order(s2)
    assert not torch.equal(s1.model.heads["sst"].out.weight, s2.model.heads["sst"].out.weight)


# ---------------------------------------------------------------- the CLI, run_glue style

def glue_argv(tiny_model, tiny_data, out, task="mrpc", *extra):
    return ["--task_name", task, *common_glue_argv(tiny_model, tiny_data, out), *extra]


def common_glue_argv(tiny_model, tiny_data, out):
    return ["--model_name_or_path", str(tiny_model), "--data_dir", str(tiny_data),
            "--do_train", "--do_eval", "--max_seq_length", "32", "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-3", "--num_train_epochs", "1", "--seed", "1", "--output_dir", str(out),
            "--device", "cpu", "--max_steps", "3"]


GLUE_CASES = [
    ("mrpc", []),
    ("mrpc", ["--optim", "mfac", "--optim_args", "num_grads=8,damp=1e-4"]),
    ("mrpc", ["--optim", "mfac", "--optim_args", '{"num_grads": 8, "damp": 1e-4}']),
    ("stsb", []),
]


@pytest.mark.parametrize("spelling", ["task_name", "preset"])
@pytest.mark.parametrize("task,optim", GLUE_CASES)
def test_cli_glue(spelling, task, optim, tiny_model, tiny_data, tmp_path, capsys):
    """run_glue's command line (--task_name), and the same run spelled --preset glue --tasks."""
    out = tmp_path / "run"
    if spelling == "task_name":
        argv = glue_argv(tiny_model, tiny_data, out, task, *optim)
    else:
        argv = ["--preset", "glue", "--tasks", task, *common_glue_argv(tiny_model, tiny_data, out), *optim]
    assert train_multitask.main(argv) == 0
    expected = MRPC_KEYS if task == "mrpc" else STSB_KEYS
    for f in ("eval_results.json", "all_results.json"):
        got = read_json(out / f)
        assert expected <= set(got), (f, sorted(got))
        assert all(math.isfinite(got[k]) for k in expected)
    config = read_json(out / "config.json")
    assert config["name"] == (f"glue-{task}" if spelling == "task_name" else "glue") and config["tasks"] == [task]
    assert (config["lr"], config["batch_size"], config["max_length"], config["epochs"]) == (1e-3, 4, 32, 1)
    assert config["pair_input"] == "cross" and config["pooling"] == "pooler"
    if optim:
        assert config["optim"] == "mfac" and config["optim_args"] == {"num_grads": 8, "damp": 1e-4}
    assert read_json(out / "trainer_state.json")["global_step"] == 3
    printed, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)
    assert printed == config  # the resolved config is printed first


def cli_exit_code(argv) -> int:
    try:
        return train_multitask.main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("argv,message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "glue", "--tasks", "nope"], "unknown task 'nope'"),
    (["--preset", "gse", "--task_name", "mrpc"], "--task_name picks the 'glue' preset"),
    (["--preset", "glue", "--optim", "mfac", "--optim_args", "bogus=1"], "unknown M-FAC argument(s) ['bogus']"),
    (["--preset", "glue", "--optim_args", "num_grads=8"], "unknown AdamW argument(s) ['num_grads']"),
    (["--preset", "glue", "--optim", "mfac", "--optim_args", "num_grads"], "expected key=value, got 'num_grads'"),
    (["--preset", "glue", "--optim", "mfac", "--optim_args", '{"num_grads": 8,'], "not valid JSON"),
    (["--task_name", "nope"], "unknown task 'nope'"),
    (["--preset", "gse", "--update", "sideways"], "unknown update 'sideways'"),
    (["--preset", "gse", "--epochs", "0"], "epochs must be > 0"),
    (["--preset", "gse", "--lr", "fast"], "--lr"),
    (["--preset", "gse,nope"], "unknown preset 'nope'"),  # several presets: each checked before any starts
    (["--preset", "gse,smart", "--epochs", "0"], "epochs must be > 0"),
    (["--preset", "gse,smart", "--seeds", "1,2"], "leave out --task_name, --seeds, --sweep, --grid, --name and --table"),
    (["--preset", "gse,smart", "--lr", "-1"], "preset gse: experiment 'gse': lr must be >= 0"),
    (["--preset", "gse,gse"], "give each preset once"),
    (["--preset", "gse,"], "no empty names"),
    (["--preset", "gse", "--jobs", "2"], "--jobs is for several presets"),
    (["--preset", "gse", "--grid", "4"], "--grid '4': give N,M, two whole numbers >= 2"),
    (["--preset", "gse", "--attn_implementation", "flash"], "unrecognized arguments: --attn_implementation"),
    (["--preset", "gse", "--max_step", "3"], "unrecognized arguments: --max_step"),  # no abbreviations
    (["--preset", "gse", "--pooling", "sum"], "unknown pooling 'sum'; choose one of cls, mean, max, pooler"),
    (["--preset", "gse,smart", "--data_dir", "{tmp}/nope"], "{tmp}/nope/cs224n/ids-sst-train.csv: file not found"),
    (["--preset", "gse,smart", "--model", "{tmp}/nope"], "no model folder at {tmp}/nope"),
])
def test_cli_errors_stop_before_any_work(argv, message, tiny_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(out), "--device", "cpu"]
    assert cli_exit_code(common + [a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2  # argv's flags win
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- configuration checks

def test_preset_takes_a_name_override():
    assert preset("gse", name="gse-lr3e-5").name == "gse-lr3e-5"


@pytest.mark.parametrize("name,heads", [("glue", {"mrpc": "concat"}), ("glue", {"stsb": "cos-2d1"}),
                                        ("baseline", {"quora": "linear"})])
def test_head_must_fit_pair_input(name, heads):
    with pytest.raises(ValueError, match="head"):
        preset(name, heads=heads, tasks=tuple(heads) if name == "glue" else ("sst", "quora", "sts"))


# ---------------------------------------------------------------- torch.compile

def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(tiny_model, tiny_data, tmp_path, monkeypatch,
                                                                   compiler):
    """--compile: the same state-dict keys (checkpoints load either way), the same outputs
    as eager in eval mode, and a GSE + SMART run (several backward passes, gradients with
    respect to the embeddings, varying sequence lengths) trains through it."""
    def trainer(name, **kw):
        return Trainer(tiny_experiment("smart-gse", tiny_model, tiny_data, tmp_path / name, max_steps=3,
                                       max_eval_examples=8, save_checkpoints=False, **kw), quiet=True)
    eager, compiled = trainer("eager"), trainer("compiled", compile=True)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    compiled.model.load_state_dict(eager.model.state_dict())
    eager.model.eval(), compiled.model.eval()
    with torch.no_grad():
        for t in ("sst", "quora", "sts"):
            batch = eager.train_batch(t, 0)
            torch.testing.assert_close(compiled.model(t, batch), eager.model(t, batch), atol=1e-5, rtol=1e-5)
    compiled.model.train()
    import minbert.optim.adamw as adamw
    calls = []
    monkeypatch.setattr(adamw, "_compiled_adamw_foreach", lambda f=adamw._compiled_adamw_foreach: calls.append(1) or f())
    result = compiled.train()
    assert len(calls) >= 2 * 3  # every optimizer step took the compiled update (2 steps x 3 updates, or more)
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["eval_overall"])


# ---------------------------------------------------------------- several presets side by side

def test_as_flags_round_trips_through_the_parser():
    from minbert.sweep.side_by_side import as_flags
    overrides = {"lr": 3e-5, "heads": {"sts": "cos-2d1"}, "tasks": ("sst", "sts"), "smart": True, "bf16": "off",
                 "optim_args": {"num_grads": 8, "damp": 1e-6}, "max_steps": 7, "model": "/x/y"}
    args = train_multitask.build_parser().parse_args(as_flags(overrides))
    assert {k: getattr(args, k) for k in overrides} == overrides


def test_presets_side_by_side_write_runs_and_table(tiny_model, tiny_data, tmp_path, capsys):
    """--preset a,b: one process per preset, each an ordinary run folder, then the table."""
    runs = tmp_path / "runs"
    argv = ["--preset", "baseline,gse,smart-gse", "--jobs", "2", "--model", str(tiny_model), "--data_dir",
            str(tiny_data), "--output_dir", str(runs), "--device", "cpu", "--batch_size", "4", "--max_steps", "2",
            "--max_eval_examples", "8", "--lr", "1e-3", "--no-save_checkpoints"]
    assert train_multitask.main(argv) == 0
    for name in ("baseline", "gse", "smart-gse"):
        config = read_json(runs / name / "config.json")
        assert config["name"] == name and config["lr"] == 1e-3 and config["save_checkpoints"] is False
        assert read_json(runs / name / "all_results.json")["global_step"] == 2
        assert "best overall" in (runs / name / "train.log").read_text()  # its output went there
    record, = [json.loads(line) for line in (runs / "side_by_side.jsonl").read_text().splitlines()]
    assert record["presets"] == ["baseline", "gse", "smart-gse"] and record["jobs"] == 2 and not record["failed"]
    assert record["wall_seconds"] > 0
    table = (runs / "cs224n_table.md").read_text()
    assert "| smart-gse | 0." in table and "| pcgrad | not run |" in table


def test_several_presets_print_config_and_start_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_multitask.main(["--preset", "gse,smart-gse", "--print_config", "--output_dir", str(runs)]) == 0
    text = capsys.readouterr().out
    first, end = json.JSONDecoder().raw_decode(text)
    second, _ = json.JSONDecoder().raw_decode(text[end:].lstrip())
    assert (first["name"], second["name"], second["smart"]) == ("gse", "smart-gse", True)
    assert not runs.exists()


def test_a_failed_preset_is_named_and_the_others_finish(tiny_model, tiny_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "gse" / "checkpoint-1").mkdir(parents=True)  # unreadable: gse cannot resume
    argv = ["--preset", "baseline,gse", "--model", str(tiny_model), "--data_dir", str(tiny_data),
            "--output_dir", str(runs), "--device", "cpu", "--batch_size", "4", "--max_steps", "2",
            "--max_eval_examples", "8"]
    assert train_multitask.main(argv) == 1
    err = capsys.readouterr().err
    assert f"1 of 2 presets failed: gse (see {runs / 'gse' / 'train.log'})" in err
    assert "cannot resume from" in (runs / "gse" / "train.log").read_text()
    assert read_json(runs / "baseline" / "all_results.json")["global_step"] == 2


def test_bucket_window_is_capped_at_one_pass(tiny_model, tiny_data, tmp_path):
    """A window longer than a pass would sort repeats of an example into one batch."""
    trainer = Trainer(tiny_experiment("baseline", tiny_model, tiny_data, tmp_path, bucket_window=100), quiet=True)
    for t, stream in trainer.streams.items():
        assert isinstance(stream, Bucketed) and stream.window == len(trainer.train_data[t]) // 4  # 48 examples, batch 4
        for s in range(3 * stream.window):
            batch = stream.batch_indices(s)
            assert len(set(batch)) == len(batch), (t, s, batch)
    big_batch = Trainer(tiny_experiment("baseline", tiny_model, tiny_data, tmp_path, bucket_window=4, batch_size=32),
                        quiet=True)
    assert not any(isinstance(s, Bucketed) for s in big_batch.streams.values())  # one batch per pass: nothing to sort
