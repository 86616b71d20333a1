"""Optimizers written by hand: AdamW (Loshchilov & Hutter) and M-FAC (Frantar et al.).
trainer.build_optimizers makes them for a model the way an Experiment asks."""
from minbert.optim.adamw import AdamW
from minbert.optim.mfac import MFAC

__all__ = ["AdamW", "MFAC"]
