"""Paths and fixtures for the tests. The default model is found as a run finds it
(minbert/run/paths.py: $MINBERT_MODEL, else the installed package); the real data through
$MINBERT_DATA or ../shared/data; the CS224N starter's reference files in ../shared/reference.
Tests that need one of them skip, naming what is missing and how to give it."""
import importlib.util
from pathlib import Path

import pytest

from minbert.exercises import ExerciseNotImplemented
from minbert.exercises.registry import EXERCISES, exercises_of
from minbert.run.paths import DATA_ENV, MODEL_ENV, default_model_if_installed, shared_data

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the CS224N starter's reference outputs, where a copy lies beside the repository
DATA = shared_data() or SHARED / "data"


MINILM = default_model_if_installed()


def fixture_script(name: str):
    """A script of tests/fixtures (not a package) as a module, for the cases it defines."""
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(path: Path, what: str, kind: str = ""):
    if not path.exists():
        how = {"model": f"make setup installs it, or set {MODEL_ENV}", "data": f"set {DATA_ENV}"}
        pytest.skip(f"{what} not found at {path} ({how.get(kind, 'a copy beside the repository, ../shared')})")
    return path


def pytest_configure(config):
    for e in EXERCISES.values():  # one marker per exercise: `pytest -m attention` runs its tests
        config.addinivalue_line("markers", f"{e.id}: the tests that grade exercise {e.id!r} ({e.where})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In a student copy: a test of no exercise that runs a stub not written yet (a training run
    needs the encoder) is skipped, naming the exercise it waits for, so that every failure left
    is an exercise's own. The solution has no stubs: nothing changes there."""
    report = (yield).get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(ExerciseNotImplemented) \
            and not any(item.get_closest_marker(e) for e in EXERCISES):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] + 1,
                           f"waits for exercise {call.excinfo.value.exercise!r}, not written yet in this copy")


def pytest_collection_modifyitems(config, items):
    """Marks each test with the exercises whose patterns (minbert/exercises/registry.py) name it."""
    for item in items:
        for ex in exercises_of(item.path.name, item.name):
            item.add_marker(ex)


# Tests that run on the CPU and again on CUDA where there is one (`pytest -m cuda` runs the latter).
CPU_AND_CUDA = [pytest.param("cpu", id="cpu"),
                pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
                    "not __import__('torch').cuda.is_available()", reason="needs a CUDA device")])]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when the cores are busy."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def compiler():
    """torch.compile on a CPU writes C++ and builds it: it needs a compiler on the PATH."""
    import shutil
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++, c++ or clang++); none on the PATH")
    from minbert.run.paths import compile_path_problem
    problem = compile_path_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def minilm_dir():
    return need(MINILM, "all-MiniLM-L6-v2 weights", "model")


# ---------------------------------------------------------------- tiny model and data
# A 2-layer BERT with a 60-word vocabulary and small data files in the real layouts, so
# that every preset can train a few steps in seconds. Written fresh by each run of the tests.

WORDS = ("good great fun lovely superb bad awful boring dull poor movie film plot actor story scene "
         "music ending the a is was very not really quite how what why can i do get learn make "
         "cat dog man woman plays runs eats guitar flute food city car").split()
POSITIVE, NEGATIVE = WORDS[:5], WORDS[5:10]


def make_tiny_model(folder: Path) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    from minbert import BertConfig, BertModel
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.to_dict().items()
                                                    if k != "attn_implementation"}))
    torch.manual_seed(0)
    save_file(BertModel(config).state_dict(), str(folder / "model.safetensors"))
    return folder


def make_tiny_data(folder: Path, n_train: int = 48, n_dev: int = 16) -> Path:
    """CS224N and GLUE files with learnable labels: sentiment follows the count of
    positive minus negative words; pairs are similar when they share words."""
    import random
    rng = random.Random(0)

    def sentence(pos: int, neg: int) -> str:
        words = rng.sample(POSITIVE, pos) + rng.sample(NEGATIVE, neg) + rng.sample(WORDS[10:], 4)
        rng.shuffle(words)
        return " ".join(words)

    def sst_row(i):
        label = rng.randrange(5)
        pos, neg = {0: (0, 3), 1: (0, 1), 2: (1, 1), 3: (1, 0), 4: (3, 0)}[label]
        return f"{i}\tsst{i}\t{sentence(pos, neg)}", label

    def pair_row(i):
        a = sentence(1, 1)
        same = rng.random() < 0.5
        b = a if same else sentence(1, 1)
        score = 5.0 if same else round(rng.uniform(0, 2), 1)
        return a, b, int(same), score

    (folder / "cs224n").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test-student", n_dev)):
        rows = [sst_row(i) for i in range(n)]
        pairs = [pair_row(i) for i in range(n)]
        labeled = split != "test-student"
        lines = ["\tid\tsentence" + ("\tsentiment" if labeled else "")]
        lines += [r + (f"\t{lab}" if labeled else "") for r, lab in rows]
        (folder / f"cs224n/ids-sst-{split}.csv").write_text("\n".join(lines) + "\n")
        for name, col in (("quora", "is_duplicate"), ("sts", "similarity")):
            lines = ["\tid\tsentence1\tsentence2" + (f"\t{col}" if labeled else "")]
            for i, (a, b, same, score) in enumerate(pairs):
                label = f"{float(same)}" if name == "quora" else f"{score}"
                lines.append(f"{i}\t{name}{i}\t{a}\t{b}" + (f"\t{label}" if labeled else ""))
            (folder / f"cs224n/{name}-{split}.csv").write_text("\n".join(lines) + "\n")
    (folder / "glue/MRPC").mkdir(parents=True, exist_ok=True)
    (folder / "glue/STS-B").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        pairs = [pair_row(i) for i in range(n)]
        mrpc = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        mrpc += [f"{same}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}" for i, (a, b, same, _) in enumerate(pairs)]
        (folder / f"glue/MRPC/{split}.tsv").write_text("\n".join(mrpc) + "\n")
        stsb = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        stsb += [f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score:.3f}" for i, (a, b, _, score) in enumerate(pairs)]
        (folder / f"glue/STS-B/{split}.tsv").write_text("\n".join(stsb) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def tiny_experiment(preset_name: str, tiny_model, tiny_data, out, **kw):
    """A preset shrunk to seconds: tiny model and data, a few steps, CPU."""
    from minbert.experiments import preset
    fields = dict(model=str(tiny_model), data_dir=str(tiny_data), output_dir=str(out), device="cpu",
                  max_steps=4, batch_size=4, eval_batch_size=8, lr=1e-3, eval_per_epoch=1)
    fields.update(kw)
    return preset(preset_name, **fields)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure plots.py saves, kept after saving so a test can read what was drawn."""
    import minbert.sweep.plots
    figures, save = [], minbert.sweep.plots._save
    monkeypatch.setattr(minbert.sweep.plots, "_save", lambda fig, out: figures.append(fig) or save(fig, out))
    return figures
