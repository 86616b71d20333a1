"""Progress of a training run: a tqdm bar on a terminal; in a log file (output not a
terminal) a short line every `every` seconds instead of a carriage-return update per step.

The figure shown is an exponential moving average of the summed task losses (weight 0.02
per step, about the last 50 steps), labelled `loss_avg`; log.jsonl holds each task's loss
of single steps (every --logging_steps), so the two differ by design.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def say(msg: str):
    """One line on stdout; above the progress bar when one is showing."""
    tqdm.write(msg)
    sys.stdout.flush()


class Progress:
    def __init__(self, total: int, initial: int, desc: str, quiet: bool = False, every: float = 30.0,
                 stream=None):
        self.total, self.step, self.desc, self.quiet, self.every = total, initial, desc, quiet, every
        self.stream = stream or sys.stderr
        self.avg = None
        self.bar = None
        if not quiet and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)
        self.start_step, self.start, self.last = initial, time.time(), time.time()

    def update(self, loss: float):
        self.step += 1
        self.avg = loss if self.avg is None else 0.98 * self.avg + 0.02 * loss
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss_avg=f"{self.avg:.4f}", refresh=False)  # shown at the next redraw
        elif not self.quiet and (time.time() - self.last >= self.every or self.step == self.total):
            self.last = time.time()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        rate = (self.step - self.start_step) / max(time.time() - self.start, 1e-9)
        left = (self.total - self.step) / rate if rate > 0 else float("nan")
        return (f"{self.desc}: step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%), "
                f"{rate:.2f} steps/s, {left / 60:.1f} min left, loss_avg {self.avg:.4f}")

    def write(self, msg: str):
        """A message on stdout that does not break the bar."""
        if not self.quiet:
            say(msg)

    def close(self):
        if self.bar is not None:
            self.bar.close()
