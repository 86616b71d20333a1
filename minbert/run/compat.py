"""Run folders written by earlier versions of minBERT, read by this one.

Each function turns what an older config.json, checkpoint or optimizer state holds into what
the current code reads, so that the loop, the run folder and the optimizers know one form
only. A field or key written by every version since it appeared needs nothing here.

    upgrade_config(d)            config.json fields -> this version's Experiment fields
    config_notes(raw, new)       differences an old config.json hides (a SMART run of no reading)
    upgrade_checkpoint(state)    a checkpoint's state.pt -> this version's keys
    MFAC_MOMENTUM_MODE           the momentum_mode of an M-FAC state saved without one
    fingerprint_of_unrecorded(model_path)   the model of a run folder without model_identity.json
    seconds_per_update(record)   an all_results.json's time of one update
"""
from __future__ import annotations

from minbert.weights import model_fingerprint

# An M-FAC state saved before momentum_mode existed summed its updates (optim/mfac.py).
MFAC_MOMENTUM_MODE = "heavy_ball"


def upgrade_config(d: dict) -> dict:
    """A config.json's fields -> this version's (a new dict):
    - attn_implementation ("sdpa" | "math") is the switch `fast` now;
    - bf16 was a switch whose true meant bf16 on CUDA only: that is "auto" now, false "off"."""
    d = dict(d)
    if "attn_implementation" in d:
        d.setdefault("fast", d.pop("attn_implementation") == "sdpa")
    if isinstance(d.get("bf16"), bool):
        d["bf16"] = "auto" if d["bf16"] else "off"
    return d


def config_notes(raw: dict, new: dict) -> list[str]:
    """What differs between an old config.json (`raw`, as read) and the run asked for (`new`)
    although the upgraded fields agree: a SMART run written before smart_reading existed used a
    perturbation no reading computes (Algorithm 1 without its projection), so it resumes as none."""
    if raw.get("smart") and "smart_reading" not in raw:
        return [f"smart_reading: the old form (Algorithm 1 without its projection, removed) -> "
                f"{new['smart_reading']!r}"]
    return []


def upgrade_checkpoint(state: dict) -> dict:
    """A checkpoint's state.pt -> this version's keys: one written before the run's cost was kept
    carries none, so its earlier stints count as no time, no memory and no commits."""
    state.setdefault("cost", {"seconds": 0.0, "update_seconds": 0.0, "peak_memory_mb": 0.0, "commits": []})
    return state


def fingerprint_of_unrecorded(model_path: str) -> str | None:
    """A run folder written before model_identity.json existed: the fingerprint of the model at
    its config.json's path while that still holds it (None when it is gone)."""
    return model_fingerprint(model_path)


def seconds_per_update(record: dict) -> float:
    """A run record's (all_results.json) time of one update without evaluation: update_ms; a
    record written before update_ms was kept gives its wall time per step instead."""
    if "update_ms" in record:
        return record["update_ms"] / 1000
    return record["train_runtime"] / max(1, record["train_steps"])
