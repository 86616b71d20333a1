"""Optimizers written by hand: AdamW (Loshchilov & Hutter) and M-FAC (Frantar et al.)."""
from minbert.optim.adamw import AdamW
from minbert.optim.mfac import MFAC

__all__ = ["AdamW", "MFAC"]
