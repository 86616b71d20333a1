"""The training batches (minbert/batches.py): collate's padding flags, and the stream whose
batch s is a pure function of s (what makes resuming exact)."""
import pytest
import torch

from minbert import BertConfig, BertModel
from minbert.batches import Bucketed, Encoded, Stream, collate
from minbert.multitask import MultitaskBert

pytestmark = pytest.mark.usefixtures("one_thread")


def test_collate_says_on_the_host_which_segments_are_padded(monkeypatch):
    """The encoder gets no mask for a segment without padding (SDPA's fastest kernel), and
    learns that from collate, not by asking the device (a sync per forward on a GPU)."""
    data = Encoded(["x", "y"], [[([2, 5, 3], [0, 0, 0]), ([2, 6, 7, 3], [0, 0, 0, 0])],
                                [([2, 8, 3], [0, 0, 0]), ([2, 9, 3], [0, 0, 0])]], [1, 0])
    batch = collate(data, [0, 1])
    assert [seg["padded"] for seg in batch["segments"]] == [False, True]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = MultitaskBert(BertModel(config), {"quora": "concat"}, "mean").eval()
    masks = []
    encode = model.bert.encode
    monkeypatch.setattr(model.bert, "encode", lambda e, mask: masks.append(mask) or encode(e, mask))
    with torch.no_grad():
        y = model("quora", batch)
        unflagged = {"segments": [{k: v for k, v in seg.items() if k != "padded"} for seg in batch["segments"]]}
        y_masked = model("quora", unflagged)  # without the flag: the mask always goes in
    assert masks[0] is None and masks[1] is not None and masks[2] is not None
    torch.testing.assert_close(y, y_masked, atol=1e-6, rtol=1e-6)


def _flat(stream, steps):
    return [i for s in range(steps) for i in stream.batch_indices(s)]


def test_stream_batch_is_a_pure_function_of_step():
    one, two = Stream(10, 4, seed=5, task_index=1), Stream(10, 4, seed=5, task_index=1)
    expected = [one.batch_indices(s) for s in range(12)]
    # out of order, repeated, and from a fresh stream: always the same batch
    for s in (7, 0, 11, 7, 3, 0):
        assert two.batch_indices(s) == expected[s]
        assert one.batch_indices(s) == expected[s]
    assert Stream(10, 4, seed=6, task_index=1).batch_indices(0) != expected[0]
    assert _flat(Stream(10, 4, seed=5, task_index=0), 5) != _flat(one, 5)  # tasks have their own orders


def test_stream_passes_are_permutations():
    stream = Stream(10, 5, seed=0, task_index=0)
    flat = _flat(stream, 8)  # 40 indices = 4 passes
    passes = [flat[k * 10:(k + 1) * 10] for k in range(4)]
    for p in passes:
        assert sorted(p) == list(range(10))
    assert len({tuple(p) for p in passes}) == 4  # each pass is shuffled anew


def _padding(batches, lengths):
    """Padded positions over real tokens, for batches padded to their longest member."""
    real = sum(lengths[i] for b in batches for i in b)
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / real - 1


@pytest.mark.parametrize("n,batch_size,window", [(100, 4, 5), (30, 8, 4), (7, 3, 2)])
def test_bucketed_stream_regroups_each_window_by_length(n, batch_size, window):
    lengths = [int(x) for x in torch.randint(5, 60, (n,), generator=torch.Generator().manual_seed(n))]
    plain = Stream(n, batch_size, seed=3, task_index=1)
    bucketed = Bucketed(Stream(n, batch_size, seed=3, task_index=1), lengths, window)
    steps = 6 * window
    got = [bucketed.batch_indices(s) for s in range(steps)]
    want = [plain.batch_indices(s) for s in range(steps)]
    for w in range(6):  # each window: the same examples as unbucketed, in full batches
        span = slice(w * window, (w + 1) * window)
        assert sorted(i for b in got[span] for i in b) == sorted(i for b in want[span] for i in b)
        assert all(len(b) == batch_size for b in got[span])
        # sorted then cut: one batch's longest is no longer than the next batch's shortest
        by_length = sorted(got[span], key=lambda b: min(lengths[i] for i in b))
        assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(by_length, by_length[1:]))
    assert _padding(got, lengths) < _padding(want, lengths)
    # a pure function of the step: a fresh stream, asked out of order, gives the same batches
    fresh = Bucketed(Stream(n, batch_size, seed=3, task_index=1), lengths, window)
    for s in (steps - 1, 0, window, 1, steps - 1):
        assert fresh.batch_indices(s) == got[s]
    # and the order of the batches within a window is shuffled, not shortest first, in some window
    assert any([min(lengths[i] for i in b) for b in got[w * window:(w + 1) * window]]
               != sorted(min(lengths[i] for i in b) for b in got[w * window:(w + 1) * window]) for w in range(6))


@pytest.mark.parametrize("n,batch_size", [(10, 4), (3, 8), (7, 7)])
def test_stream_batches_straddle_passes(n, batch_size):
    """Batch s is items s*B .. s*B+B-1 of one endless sequence of permutations, across pass ends."""
    reference = _flat(Stream(n, 1, seed=3, task_index=2), 6 * batch_size)  # one item per step
    stream = Stream(n, batch_size, seed=3, task_index=2)
    for s in range(6):
        batch = stream.batch_indices(s)
        assert len(batch) == batch_size
        assert batch == reference[s * batch_size:(s + 1) * batch_size]
    for k in range(len(reference) // n):
        assert sorted(reference[k * n:(k + 1) * n]) == list(range(n))
