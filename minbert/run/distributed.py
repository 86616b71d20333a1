"""Data-parallel training with torch.distributed: what changes under `torchrun`.

    torchrun --standalone --nproc_per_node=4 train_multitask.py --preset gse

Each of the N processes (ranks) holds the whole model. Batch s of a task is a global
batch of `batch_size * N` examples drawn from the task's stream (batches.Stream, a pure
function of s), and rank r trains on its r-th slice of `batch_size`. Every loss is a
mean over its batch and the slices have equal sizes, so the mean of the N ranks'
gradients is the gradient of the mean loss over the union of the slices: once the
gradients are averaged, every update equals (up to float rounding) the single-process
update with batch `batch_size * N`. An epoch counts global batches.

Why an explicit all-reduce and not DistributedDataParallel: DDP averages gradients from
hooks that fire inside `loss.backward()` after a call to the wrapper's `forward`. Here
- PCGrad takes each task's gradient with `torch.autograd.grad` and must average it
  across ranks *before* the projection (projecting is not linear: the average of the
  ranks' PCGrad updates is not the PCGrad update of the union batch);
- SMART runs extra forwards and an inner `autograd.grad` on the embedding noise;
- the trainer calls `MultitaskBert.embed` / `from_embeds`, which DDP's `forward` never sees.
So the trainer averages at one place per update instead: after `backward()` (or inside
`pcgrad_backward`, per task), before clipping and the optimizer step. That is what DDP
does, minus overlapping the communication with the backward pass: one flattened bucket,
one all_reduce. Every rank starts from the same weights (same checkpoint, same init
seed) and applies the same averaged gradient, so the optimizer states (AdamW's moments,
M-FAC's gradient buffer) and SMART's teacher stay identical without being communicated.

Rank 0 alone prints, evaluates and writes files; the other ranks wait for it at their
next collective call. Dropout and SMART noise differ per rank (seed + rank); a
checkpoint keeps every rank's random state, and all ranks resume from it.

Without torchrun (WORLD_SIZE unset or 1) every function here returns its input or
does nothing, and the trainer is the plain single-process loop.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    # RANK also before the process group exists, so that train_multitask.py prints once
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Under torchrun: join the process group (nccl on CUDA, gloo on CPU) and return this
    rank's device, cuda:LOCAL_RANK. Otherwise: `device`, unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 evaluates alone while the others wait in a collective: allow it time
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def teardown():
    """Leave the process group, all ranks together (rank 0 may still be writing results)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _device() -> torch.device:
    # the tensors a collective sends must live where the backend works: CUDA for nccl
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor's mean over the ranks, as new tensors: one flattened bucket, one all_reduce."""
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum of numel,)
    dist.all_reduce(flat)  # sum over ranks; nccl's AVG does not exist for gloo
    flat /= world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def average_grads(params) -> None:
    """p.grad <- its mean over the ranks, for every param that has a .grad (call after backward)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.grad is not None]  # None on one rank is None on all: same graph
    for p, g in zip(params, average([p.grad for p in params])):
        p.grad = g


def average_values(values: dict[str, float]) -> dict[str, float]:
    """{name: float} -> the mean of each over the ranks (losses for the log)."""
    if world_size() == 1:
        return values
    (mean,) = average([torch.tensor(list(values.values()), dtype=torch.float64, device=_device())])
    return dict(zip(values, mean.tolist()))


def all_ranks(flag: bool) -> bool:
    """True only if `flag` is true on every rank, so that all take the same branch."""
    if world_size() == 1:
        return flag
    t = torch.tensor(int(flag), device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...], on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's obj, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
