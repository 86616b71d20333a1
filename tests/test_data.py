"""Tests for minbert/data.py and data/prepare_data.py.

Fixture files are written into tmp_path by the tests themselves. The tests on the
real files run where ../shared/data exists (or $MINBERT_SHARED/data: minbert/run/paths.py).
"""
import importlib.util
import logging
import math
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from minbert.data import SPLITS, TASKS, DataError, Example, read_file, read_split
from minbert.run.paths import shared_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_dir() / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "cs224n").is_dir(), reason=f"no real data at {SHARED}")

# CS224N layout: tab-separated, csv quoting, unnamed index column first
SST_TRAIN = (
    "\tid\tsentence\tsentiment\n"
    "0\ta1\t The film is `` fine '' .\t3\n"
    '1\ta2\t"He said ""wow"" twice ."\t0\n'
    "2\ta3\tAll in all , good .\t4\n"
)
# the test-student files have a different header: a second index column and no label
SST_TEST = (
    "0\t\tid\tsentence\n"
    "1\t0.0\tt1\t Effective but too-tepid biopic\n"
    "2\t1.0\tt2\tA good place to start .\n"
)
QUORA = (
    "\tid\tsentence1\tsentence2\tis_duplicate\n"
    "10\tq1\tHow do I learn?\tHow can I learn?\t1.0\n"
    "11\tq2\tWhat is X?\tWhere is Y?\t0.0\n"
)
STS = (
    "\tid\tsentence1\tsentence2\tsimilarity\n"
    "5\ts1\tA man plays.\tA man is playing.\t4.6\n"
    "6\ts2\tA cat.\tA dog.\t0.0\n"
)
# GLUE layout: tab-separated, no quoting; MRPC train/dev start with a byte-order mark
MRPC_TRAIN = (
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t702876\t702977\tHe called " the witness " .\t" The witness , he said .\n'
    "0\t2108705\t2108831\tYucaipa owned it .\tYucaipa bought it .\n"
)
MRPC_TEST = (
    "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    "0\t1089874\t1089925\tPCCW 's officer .\tThe officer .\n"
)
SST2_TRAIN = "sentence\tlabel\nhide new secretions \t0\ncharming journey . \t1\n"
SST2_TEST = "index\tsentence\n0\tuneasy mishmash .\n1\ta poor imitation .\n"
STSB_TRAIN = (
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\tA plane is taking off.\t5.000\n"
)
QQP_TRAIN = (
    "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    '133273\t213221\t213222\tHow is the life of a "math" student?\tWhat is it like to study math?\t0\n'
    "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
)


def write(path: Path, text, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def raises_at(task, path, line, *words, labeled=True):
    """Assert read_file raises a DataError naming the file, the line and an expectation."""
    with pytest.raises(DataError) as info:
        read_file(task, path, labeled=labeled)
    message = str(info.value)
    assert str(path) in message and "expected" in message, message
    if line is not None:
        assert f"line {line}:" in message and info.value.line == line, message
    for word in words:
        assert word in message, message
    return info.value


# ---------------------------------------------------------------------------- reading good files

def test_cs224n_single_sentence(tmp_path):
    examples = read_file("sst", write(tmp_path / "sst.csv", SST_TRAIN), labeled=True)
    assert examples == [
        Example("a1", "The film is `` fine '' .", None, 3),
        Example("a2", 'He said "wow" twice .', None, 0),  # csv quoting undone
        Example("a3", "All in all , good .", None, 4),
    ]
    assert examples.skipped == []


def test_cs224n_test_student_header(tmp_path):
    examples = read_file("sst", write(tmp_path / "test.csv", SST_TEST), labeled=False)
    assert examples == [Example("t1", "Effective but too-tepid biopic", None, None),
                        Example("t2", "A good place to start .", None, None)]


def test_cs224n_pairs_and_label_types(tmp_path):
    quora = read_file("quora", write(tmp_path / "q.csv", QUORA), labeled=True)
    assert quora[0] == Example("q1", "How do I learn?", "How can I learn?", 1)
    assert all(type(ex.label) is int for ex in quora)  # 1.0 -> 1
    sts = read_file("sts", write(tmp_path / "s.csv", STS), labeled=True)
    assert [ex.label for ex in sts] == [4.6, 0.0] and all(type(ex.label) is float for ex in sts)


def test_glue_files(tmp_path):
    mrpc = read_file("mrpc", write(tmp_path / "mrpc.tsv", MRPC_TRAIN), labeled=True)
    # BOM stripped from the header; quotes are literal text; no id column -> row index
    assert mrpc[0] == Example("0", 'He called " the witness " .', '" The witness , he said .', 1)
    assert mrpc[1].id == "1" and mrpc[1].label == 0
    test = read_file("mrpc", write(tmp_path / "mrpc-test.tsv", MRPC_TEST), labeled=False)
    assert test == [Example("0", "PCCW 's officer .", "The officer .", None)]
    sst2 = read_file("sst2", write(tmp_path / "sst2.tsv", SST2_TRAIN), labeled=True)
    assert sst2 == [Example("0", "hide new secretions", None, 0), Example("1", "charming journey .", None, 1)]
    sst2_test = read_file("sst2", write(tmp_path / "sst2-test.tsv", SST2_TEST), labeled=False)
    assert [ex.id for ex in sst2_test] == ["0", "1"]
    stsb = read_file("stsb", write(tmp_path / "stsb.tsv", STSB_TRAIN), labeled=True)
    assert stsb == [Example("0", "A plane takes off.", "A plane is taking off.", 5.0)]
    qqp = read_file("qqp", write(tmp_path / "qqp.tsv", QQP_TRAIN), labeled=True)
    assert qqp[0] == Example("133273", 'How is the life of a "math" student?', "What is it like to study math?", 0)


def test_read_split_layout_and_crlf(tmp_path):
    write(tmp_path / "cs224n/ids-sst-train.csv", SST_TRAIN.replace("\n", "\r\n"))
    write(tmp_path / "cs224n/ids-sst-test-student.csv", SST_TEST)
    write(tmp_path / "glue/SST-2/dev.tsv", SST2_TRAIN)
    assert [ex.label for ex in read_split("sst", tmp_path, "train")] == [3, 0, 4]
    assert read_split("sst", tmp_path, "test")[0].label is None  # test files are read unlabeled
    assert len(read_split("sst2", str(tmp_path), "dev")) == 2


def test_task_registry():
    assert set(TASKS) == {"sst", "quora", "sts", "cfimdb", "mrpc", "stsb", "sst2", "qqp"}
    for name, spec in TASKS.items():
        assert spec.name == name and set(spec.files) == set(SPLITS)
        assert (spec.kind == "regression") == (spec.num_labels == 1)
        assert spec.pair == (len(spec.text_columns) == 2)
    assert TASKS["sst"].num_labels == 5 and TASKS["sst"].label_range == (0, 4)
    assert TASKS["sst"].files["test"] == "cs224n/ids-sst-test-student.csv"
    assert TASKS["sts"].label_range == (0.0, 5.0) and TASKS["mrpc"].metric == "f1"


def test_unknown_names():
    with pytest.raises(ValueError, match="known tasks: sst, quora"):
        read_split("imdb", "data", "train")
    with pytest.raises(ValueError, match="known splits: train, dev, test"):
        read_split("sst", "data", "validation")
    with pytest.raises(ValueError, match="on_error"):
        read_split("sst", "data", "train", on_error="ignore")


# ---------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(DataError) as info:
        read_split("sst", tmp_path, "dev")
    message = str(info.value)
    assert str(tmp_path / "cs224n/ids-sst-dev.csv") in message and "expected" in message
    assert "python data/prepare_data.py --from ../shared/data" in message


def test_missing_column(tmp_path):
    path = write(tmp_path / "test.csv", SST_TEST)
    err = raises_at("sst", path, 1, "'sentiment'", "found ['0', '', 'id', 'sentence']", "labeled=False")
    assert err.line == 1
    path = write(tmp_path / "renamed.tsv", "sentence\tgold\nfine .\t1\n")
    raises_at("sst2", path, 1, "'label'", "found ['sentence', 'gold']")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    raises_at("sst", write(tmp_path / "empty.csv", content), 1, "empty")


def test_header_only_file(tmp_path):
    raises_at("sst", write(tmp_path / "header.csv", "\tid\tsentence\tsentiment\n"), 2, "no usable rows")


@pytest.mark.parametrize("task,label,words", [
    ("sst", "7", ["label '7'", "integer class in 0..4", "'sentiment'"]),
    ("sst", "-1", ["label '-1'", "0..4"]),
    ("sst", "2.5", ["label '2.5'", "integer class"]),
    ("sst", "good", ["'good', not a number", "0..4"]),
    ("sst", "", ["empty label"]),
    ("sts", "5.5", ["label '5.5'", "a number in 0.0..5.0", "'similarity'"]),
    ("sts", "nan", ["label 'nan'", "0.0..5.0"]),
    ("quora", "2.0", ["label '2.0'", "0..1", "'is_duplicate'"]),
])
def test_bad_labels(tmp_path, task, label, words):
    good = {"sst": SST_TRAIN, "sts": STS, "quora": QUORA}[task]
    lines = good.splitlines(keepends=True)
    fields = lines[2].rstrip("\n").split("\t")
    lines[2] = "\t".join(fields[:-1] + [label]) + "\n"  # line 3 gets the bad label
    raises_at(task, write(tmp_path / "bad.csv", "".join(lines)), 3, *words)


def test_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "fields.csv", SST_TRAIN + "3\ta4\tone\textra\t2\n")
    raises_at("sst", path, 5, "5 tab-separated fields", "expected 4")
    path = write(tmp_path / "fields.tsv", SST2_TRAIN + "no label here\n")
    raises_at("sst2", path, 4, "1 tab-separated fields", "expected 2")


@pytest.mark.parametrize("bad_line", ['3\ta4\t"never closed .\t2\n', '3\ta4\t"closed" too early\t2\n'])
def test_broken_quoting(tmp_path, bad_line):
    path = write(tmp_path / "quotes.csv", SST_TRAIN + bad_line + "4\ta5\tfine .\t1\n")
    raises_at("sst", path, 5, "broken quoting", "doubled")
    # one broken row spoils only its own line
    assert len(read_file("sst", path, labeled=True, on_error="skip")) == 4


def test_label_lost_to_quoting_like_quora_dev(tmp_path):
    # the shape of quora-dev.csv line 2577: a question with a stray quote, empty label
    row = '65479\tad1\tAny idea?\t"""Where can I find a dress?"\t\n'
    path = write(tmp_path / "quora.csv", QUORA + row)
    raises_at("quora", path, 4, "empty label", "0..1", 'stray "')


def test_empty_text(tmp_path):
    raises_at("quora", write(tmp_path / "q.csv", QUORA + "12\tq3\tWhat?\t \t0.0\n"), 4,
              "'sentence2' is empty", "some text")


def test_not_utf8(tmp_path):
    data = SST_TRAIN.encode() + b"3\ta4\tcaf\xe9 au lait\t2\n" + "4\ta5\tcafé .\t1\n".encode()
    path = write(tmp_path / "latin1.csv", data)
    raises_at("sst", path, 5, "not UTF-8", "\\xe9")
    examples = read_file("sst", path, labeled=True, on_error="skip")
    assert [ex.text_a for ex in examples][-1] == "café ."  # the UTF-8 lines around it still read


# ---------------------------------------------------------------------------- on_error="skip"

def test_skip_counts_and_logs(tmp_path, caplog):
    text = SST_TRAIN + "3\ta4\tbad label\t9\n" + "4\ta5\ttoo\tmany\t1\n" + "5\ta6\tkept .\t2\n"
    path = write(tmp_path / "mixed.csv", text)
    with caplog.at_level(logging.WARNING, logger="minbert.data"):
        examples = read_file("sst", path, labeled=True, on_error="skip")
    assert [ex.id for ex in examples] == ["a1", "a2", "a3", "a6"]
    assert [err.line for err in examples.skipped] == [5, 6]
    assert "skipped 2 bad row(s) on line(s) 5, 6" in caplog.text and str(path) in caplog.text


def test_skip_keeps_row_index_ids(tmp_path):
    path = write(tmp_path / "sst2.tsv", "sentence\tlabel\nfirst\t0\nbroken\t7\nthird\t1\n")
    examples = read_file("sst2", path, labeled=True, on_error="skip")
    assert [(ex.id, ex.text_a) for ex in examples] == [("0", "first"), ("2", "third")]


def test_skip_does_not_hide_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_file("sst", tmp_path / "nope.csv", labeled=True, on_error="skip")
    with pytest.raises(DataError, match="no column"):
        read_file("sst", write(tmp_path / "t.csv", SST_TEST), labeled=True, on_error="skip")
    with pytest.raises(DataError, match="empty"):
        read_file("sst", write(tmp_path / "e.csv", ""), labeled=True, on_error="skip")


# ---------------------------------------------------------------------------- the real files

# rows read with on_error="skip", and rows skipped: the numbers in data/README.md
REAL_COUNTS = {
    ("sst", "train"): (8544, 0), ("sst", "dev"): (1101, 0), ("sst", "test"): (2210, 0),
    ("quora", "train"): (13505, 1), ("quora", "dev"): (20212, 2),
    ("sts", "train"): (6040, 0), ("sts", "dev"): (863, 0), ("sts", "test"): (1725, 0),
    ("cfimdb", "train"): (1707, 0), ("cfimdb", "dev"): (245, 0), ("cfimdb", "test"): (488, 0),
    ("mrpc", "train"): (3668, 0), ("mrpc", "dev"): (408, 0), ("mrpc", "test"): (1725, 0),
    ("stsb", "train"): (5749, 0), ("stsb", "dev"): (1500, 0), ("stsb", "test"): (1379, 0),
    ("sst2", "train"): (67349, 0), ("sst2", "dev"): (872, 0), ("sst2", "test"): (1821, 0),
}


@needs_shared
@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_file(task, split):
    examples = read_split(task, SHARED, split, on_error="skip")
    rows, skipped = REAL_COUNTS[task, split]
    assert (len(examples), len(examples.skipped)) == (rows, skipped)
    spec = TASKS[task]
    assert len({ex.id for ex in examples}) == rows
    assert all(ex.text_a and (ex.text_b is not None) == spec.pair for ex in examples)
    if split == "test":
        assert all(ex.label is None for ex in examples)
    else:
        low, high = spec.label_range
        assert all(low <= ex.label <= high and not math.isnan(ex.label) for ex in examples)


@needs_shared
def test_real_quora_bad_rows():
    with pytest.raises(DataError, match="line 2577: an empty label"):
        read_split("quora", SHARED, "dev")
    dev = read_split("quora", SHARED, "dev", on_error="skip")
    assert [err.line for err in dev.skipped] == [2577, 14222]
    assert all('stray "' in str(err) for err in dev.skipped)
    with pytest.raises(DataError, match="line 5001: 9 tab-separated fields"):
        read_split("quora", SHARED, "train")


@needs_shared
def test_real_quora_dev_is_fast():
    """A guard against accidentally quadratic parsing (20k rows take ~0.1 s of CPU alone).
    CPU time, with a wide margin: wall time on a shared CI machine says little."""
    start = time.process_time()
    read_split("quora", SHARED, "dev", on_error="skip")
    assert time.process_time() - start < 2.0


# ---------------------------------------------------------------------------- data/prepare_data.py

@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "data/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_script_copies_fixture_folder(tmp_path):
    # run as a student would, in a fresh process
    source, target = tmp_path / "source", tmp_path / "target"
    write(source / "cs224n/ids-sst-train.csv", SST_TRAIN)
    write(source / "cs224n/ids-sst-test-student.csv", SST_TEST)
    write(source / "glue/MRPC/train.tsv", MRPC_TRAIN)
    command = [sys.executable, str(REPO / "data/prepare_data.py"), "--from", str(source), "--to", str(target)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 copied" in first.stdout and "cs224n/ids-sst-train.csv" in first.stdout
    assert (target / "glue/MRPC/train.tsv").read_bytes() == (source / "glue/MRPC/train.tsv").read_bytes()
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)  # idempotent
    assert second.returncode == 0 and "0 copied, 3 already there" in second.stdout


def test_prepare_replaces_changed_file(tmp_path, prepare, capsys):
    source, target = tmp_path / "source", tmp_path / "target"
    write(source / "glue/SST-2/dev.tsv", SST2_TRAIN)
    write(target / "glue/SST-2/dev.tsv", "sentence\tlabel\nstale\t0\n")
    assert prepare.main(["--from", str(source), "--to", str(target)]) == 0
    assert "1 copied" in capsys.readouterr().out
    assert (target / "glue/SST-2/dev.tsv").read_text() == SST2_TRAIN


def test_prepare_rejects_unreadable_copy(tmp_path, prepare, capsys):
    source = tmp_path / "source"
    write(source / "cs224n/ids-sst-train.csv", "\tid\tsentence\n0\ta\tno label column\n")
    assert prepare.main(["--from", str(source), "--to", str(tmp_path / "target")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "no column 'sentiment'" in out


def test_prepare_without_source_folder(tmp_path, prepare, capsys):
    assert prepare.main(["--from", str(tmp_path / "missing"), "--to", str(tmp_path / "target")]) == 1
    assert "not a folder" in capsys.readouterr().out


@needs_shared
def test_prepare_copies_shared_folder(tmp_path, prepare, capsys):
    assert prepare.main(["--from", str(SHARED), "--to", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20 copied" in out and "2 bad row(s) skipped (line 2577, 14222" in out
    assert len(read_split("sst2", tmp_path, "train")) == 67349


def test_prepare_offline_message(tmp_path, prepare, monkeypatch, capsys):
    def no_network(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(prepare.urllib.request, "urlopen", no_network)
    assert prepare.main(["--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not reach" in err and "--from PATH" in err
    assert not any(tmp_path.iterdir())


def test_derive_mrpc_train(prepare):
    msr = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
           "1\t1\t2\tA .\tB .\r\n0\t3\t4\tC .\tD .\r\n1\t5\t6\tE .\tF .\r\n")
    train = prepare.derive_mrpc_train(msr, "3\t4\n")
    assert train == ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t1\t2\tA .\tB .\n1\t5\t6\tE .\tF .\n")
