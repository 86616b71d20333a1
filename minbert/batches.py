"""From examples to padded tensor batches.

Each data set is tokenized once. Training batches come from an endless stream per task:
the concatenation of one random permutation after another, each drawn from a generator
seeded by (data seed, task, pass). Batch s of a task is therefore a pure function of s,
which makes resuming exact and lets a small task repeat while a big one (Quora) keeps
showing new examples, as the CS224N paper's iterations-per-epoch scheme intends.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minbert.data import Example


@dataclass
class Encoded:
    """A tokenized data set: per example, one or two segments of (ids, type ids)."""
    ids: list[str]
    segments: list[list[tuple[list[int], list[int]]]]
    labels: list  # None entries for unlabeled files

    def __len__(self):
        return len(self.ids)


def encode(tokenizer, examples: list[Example], siamese: bool, max_length: int) -> Encoded:
    """siamese: A and B become separate segments; otherwise B is packed after A (cross input)."""
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples]
    pair = examples and examples[0].text_b is not None
    if not pair:
        segs = [[s] for s in tokenizer.encode_lists(a, max_length=max_length)]
    elif siamese:
        segs = [list(s) for s in zip(tokenizer.encode_lists(a, max_length=max_length),
                                     tokenizer.encode_lists(b, max_length=max_length))]
    else:
        segs = [[s] for s in tokenizer.encode_lists(a, b, max_length=max_length)]
    return Encoded([e.id for e in examples], segs, [e.label for e in examples])


def collate(data: Encoded, index: list[int], pad_id: int = 0, multiple_of: int = 0, max_length: int = 0) -> dict:
    """Pads each segment to its longest member in the batch; with multiple_of > 0, further, up
    to a multiple of it (at most max_length, when given): a few fixed lengths instead of one per
    longest member, which compiled code with static shapes (CUDA graphs) needs. Padding is
    masked, so it changes no output beyond float rounding."""
    segments = []
    for k in range(len(data.segments[index[0]])):
        seqs = [data.segments[i][k] for i in index]
        T = max(len(ids) for ids, _ in seqs)
        if multiple_of > 0:  # up to the next multiple, never past max_length (when given)
            up = -(-T // multiple_of) * multiple_of
            T = max(T, min(up, max_length)) if max_length else up
        input_ids = torch.full((len(index), T), pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(index), T), dtype=torch.long)
        attention_mask = torch.zeros((len(index), T), dtype=torch.long)
        for row, (ids, types) in enumerate(seqs):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            token_type_ids[row, :len(ids)] = torch.tensor(types)
            attention_mask[row, :len(ids)] = 1
        segments.append({"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                         "padded": any(len(ids) < T for ids, _ in seqs)})  # known here, without a device sync
    labels = [data.labels[i] for i in index]
    batch = {"segments": segments, "ids": [data.ids[i] for i in index]}
    if all(lab is not None for lab in labels):
        batch["labels"] = torch.tensor(labels)
    return batch


def to_device(batch: dict, device) -> dict:
    return {**batch,
            "segments": [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in s.items()}
                         for s in batch["segments"]],
            **({"labels": batch["labels"].to(device)} if "labels" in batch else {})}


class Stream:
    """Batch s of one task's endless shuffled stream (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, task_index: int):
        self.n, self.batch_size, self.seed, self.task_index = n, batch_size, seed, task_index
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, k: int) -> torch.Tensor:
        if k not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.task_index * 10_007 + k)
            self._perms = {k: torch.randperm(self.n, generator=g)}  # keep only the current pass
        return self._perms[k]

    def batch_indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [int(self._perm(q // self.n)[q % self.n]) for q in range(start, start + self.batch_size)]


class Bucketed:
    """A Stream's batches regrouped by length, so that a batch pads little: the examples of
    `window` consecutive batches are sorted by length, cut into batches again, and those
    batches shuffled. A window holds exactly the examples it holds unbucketed, and batch s
    is still a pure function of s. Off by default (--bucket_window): the CS224N runs keep
    the paper's random batches, since length-sorted batches are not independent draws."""

    def __init__(self, stream: Stream, keys: list, window: int):
        self.stream, self.keys, self.window = stream, keys, window  # keys: length_keys(data)
        self.batch_size = stream.batch_size
        self._windows: dict[int, list[list[int]]] = {}

    def _batches(self, w: int) -> list[list[int]]:
        if w not in self._windows:
            W, B = self.window, self.batch_size
            index = [i for s in range(w * W, (w + 1) * W) for i in self.stream.batch_indices(s)]
            index.sort(key=self.keys.__getitem__)  # stable: ties keep the random order
            # the shuffle of window w: a seed of its own, below those of this task's passes (k >= 0)
            g = torch.Generator().manual_seed(self.stream.seed * 1_000_003 + self.stream.task_index * 10_007 - w - 1)
            self._windows = {w: [index[b * B:(b + 1) * B] for b in torch.randperm(W, generator=g).tolist()]}
        return self._windows[w]

    def batch_indices(self, step: int) -> list[int]:
        return self._batches(step // self.window)[step % self.window]


def bucketed(stream: Stream, keys: list, window: int) -> Stream | Bucketed:
    """The stream, bucketed in windows of at most one pass: a longer window would sort
    repeats of an example into one batch. Unchanged where a pass holds under two batches."""
    window = min(window, stream.n // stream.batch_size)
    return Bucketed(stream, keys, window) if window >= 2 else stream


def make_streams(data: dict[str, Encoded], global_batch: int, seed: int, bucket_window: int = 0) -> tuple[dict, list]:
    """One endless stream of batch indices per task (bucketed when bucket_window > 1), and
    notes on windows cut to one pass."""
    streams, notes = {}, []
    for i, (t, d) in enumerate(data.items()):
        streams[t] = Stream(len(d), global_batch, seed, i)
        if bucket_window > 1:  # less padding: batches of similar lengths
            streams[t] = bucketed(streams[t], length_keys(d), bucket_window)
            window = getattr(streams[t], "window", 1)
            if window < bucket_window:
                notes.append(f"{t}: bucket window {window}, not {bucket_window}: a window holds at most one pass "
                             f"over its {len(d)} examples" + ("; no bucketing" if window < 2 else ""))
    return streams, notes


def length_keys(data: Encoded) -> list[tuple[int, int]]:
    """Per example (longest segment, all tokens). Each segment is padded to its own longest in
    the batch, so a pair's longer side decides how much padding it brings; sort by it first."""
    return [(max(len(ids) for ids, _ in segs), sum(len(ids) for ids, _ in segs)) for segs in data.segments]


def eval_batches(data: Encoded, batch_size: int):
    """In-order index lists for evaluation, grouped by length so batches carry little padding."""
    keys = length_keys(data)
    order = sorted(range(len(data)), key=keys.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
