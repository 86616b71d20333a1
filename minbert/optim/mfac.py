"""Dense M-FAC (Frantar, Kurtic & Alistarh 2021, "M-FAC: Efficient Matrix-Free
Approximations of Second-Order Information", NeurIPS; arXiv:2107.03356).

All parameters of the optimizer are flattened into one vector of length d. A ring
buffer G (m, d) holds the last m gradients (rows not yet written are zero and add
nothing), and the newest gradient g is preconditioned with the inverse of the
damped empirical Fisher over that sliding window:

    F = damp * I + (1/m) * sum_i g_i g_i^T = damp * I + G^T G / m

Woodbury turns the d x d inverse into an m x m one,

    F^{-1} g = (1/damp) * (g - G^T (m*damp*I + G G^T)^{-1} G g).

g is itself row j of G (it is written first), so the push-through identity
F^{-1} G^T = m G^T (m*damp*I + G G^T)^{-1} gives the same vector without the 1/damp:

    F^{-1} g = m * G^T x,   where (m*damp*I + K) x = e_j,   K = G G^T (m, m).

We use this form: with damp=1e-6 the first one subtracts two nearly equal float32
vectors and multiplies the difference by 1e6 (off by >100% on the tests' stream).
K is kept up to date incrementally (only row/column j changes: O(m d)); the m x m
system is solved directly, O(m^3), small next to the O(m d) products when d >> m.
(The paper's cheaper incremental update of the m x m coefficients is left out for
readability; a fresh solve cannot drift.)

Update, per param group (lr, weight_decay, momentum may differ between groups). Weight
decay and momentum each come in two forms; the defaults are those of the authors' code
(IST-DASLab/M-FAC, optim.py), so that lr, weight_decay and momentum mean what they mean
there and in the paper's runs.

weight_decay_mode="preconditioned" (default): the decay is added to the gradient before
it is written into the buffer, so it is preconditioned with it and is part of the window:
    g <- grad + weight_decay * p            (this g is the row written into G)
weight_decay_mode="decoupled" (AdamW-style): G holds the bare gradient and the weights
shrink apart from the preconditioner, before the step:
    g <- grad,   p <- p - lr * weight_decay * p

momentum_mode="average" (default): v is a running average of the preconditioned updates,
    v <- momentum * v + (1 - momentum) * F^{-1} g
momentum_mode="heavy_ball": v sums them,
    v <- momentum * v + F^{-1} g
then, in both,
    p <- p - lr * v                         (v = F^{-1} g when momentum = 0)
Both start from v = 0, so the heavy-ball v is exactly the average's v / (1 - momentum):
heavy_ball at lr steps like average at lr / (1 - momentum) (10x at momentum 0.9).

A parameter whose .grad is None counts as a zero gradient in g (and in its stored row:
no weight_decay * p either) and is left untouched at that step: no decay, no update,
its momentum kept.

buffer_dtype=torch.bfloat16 stores G in bf16 (half the memory). g is rounded to bf16
when it is written, and the update is F^{-1} of that rounded g (so it stays exactly in
the span of G); all products are float32 (G is upcast in column chunks, never as a
whole). Tolerances (relative 2-norm of F^{-1} g, as tested): float32 vs a float64
explicit inverse 1e-6 for independent gradients, 1e-5 for damp=1e-6 and gradients of
cosine ~0.5; bf16 vs float32 1e-2 for cosine ~0.5 (measured ~3.5e-3; bf16 rounding of g
alone is ~2e-3). Both grow with the conditioning of the window: at cosine 0.99 bf16
differs by ~3e-2.

State (buffer, Gram matrix, step count, momentum) lives on the optimizer, not per
parameter; state_dict/load_state_dict carry it under the key "mfac", with momentum_mode:
a saved momentum is refused by the other mode. As in torch.optim, state_dict returns live tensors: save or copy it
before the next step.
"""
import os

import torch

from minbert.run.compat import MFAC_MOMENTUM_MODE

WEIGHT_DECAY_MODES = ("preconditioned", "decoupled")  # the first is the default (the authors')
MOMENTUM_MODES = ("average", "heavy_ball")  # the first is the default (the authors')


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`, or None when unknown (then the memory check is skipped)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:  # MemAvailable counts reclaimable page cache; SC_AVPHYS_PAGES does not
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _human(x: float, unit: str = "") -> str:
    """22_680_000 -> '22.7M';  92_897_280_000 with unit 'B' -> '92.9 GB' (powers of 1000)."""
    space = " " if unit else ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.1f}{space}{prefix}{unit}"
    return f"{x}{space}{unit}"


class MFAC(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, num_grads: int = 1024, damp: float = 1e-6,
                 momentum: float = 0.0, weight_decay: float = 0.0,
                 buffer_dtype: torch.dtype = torch.float32, check_memory: bool = True,
                 weight_decay_mode: str = "preconditioned", momentum_mode: str = "average"):
        if not (isinstance(num_grads, int) and num_grads >= 1):
            raise ValueError(f"num_grads must be an int >= 1, got {num_grads!r}")
        if not damp > 0.0:
            raise ValueError(f"damp must be > 0 (it keeps F invertible), got {damp}")
        if buffer_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"buffer_dtype must be torch.float32 or torch.bfloat16, got {buffer_dtype}")
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, "
                             f"got {weight_decay_mode!r}")
        if momentum_mode not in MOMENTUM_MODES:
            raise ValueError(f"momentum_mode must be one of {MOMENTUM_MODES}, got {momentum_mode!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.damp = damp
        self.weight_decay_mode, self.momentum_mode = weight_decay_mode, momentum_mode
        devices = {p.device for group in self.param_groups for p in group["params"]}
        if len(devices) != 1:
            raise ValueError(f"M-FAC keeps one buffer for all its parameters; they must share "
                             f"one device, got {sorted(map(str, devices))}")
        device = devices.pop()
        m, d = num_grads, sum(p.numel() for group in self.param_groups for p in group["params"])

        buffer = self.buffer_bytes(d, m, buffer_dtype)
        dtype_name = str(buffer_dtype).removeprefix("torch.")
        print(f"M-FAC buffer: m={m} x d={_human(d)} in {dtype_name} = {_human(buffer, 'B')}")
        if check_memory:
            # + the m x m Gram matrix and ~3 float32 vectors of length d (g, F^{-1} g, momentum)
            need, free = buffer + 4 * (m * m + 3 * d), available_memory(device)
            if free is not None and need > free:
                knobs = "lower num_grads" + (
                    ", use buffer_dtype=torch.bfloat16 (half)" if buffer_dtype == torch.float32 else "")
                raise ValueError(
                    f"M-FAC needs {_human(need, 'B')} on {device} (buffer m={m} x d={_human(d)} in "
                    f"{dtype_name}) but only {_human(free, 'B')} is available: {knobs}, or give "
                    f"M-FAC fewer parameters (the rest can go in AdamW). check_memory=False skips this.")

        self.grads = torch.zeros(m, d, dtype=buffer_dtype, device=device)  # G, ring buffer
        self.gram = torch.zeros(m, m, dtype=torch.float32, device=device)  # K = G G^T
        self.momentum_buffer = None  # (d,) float32, made on the first step with momentum
        self.num_steps = 0  # the next gradient goes to row num_steps % m
        # Upcasting a bf16 G to float32 in one go would cost 2x its memory; do it in column
        # chunks of ~2^26 elements (256 MB) instead. A float32 G needs no copy: one chunk.
        self._chunk = d if buffer_dtype == torch.float32 else max(1, 2**26 // m)

    def add_param_group(self, param_group):
        if hasattr(self, "grads"):
            raise ValueError("M-FAC sizes its gradient buffer at construction; "
                             "pass every parameter group to MFAC(...)")
        shared = {"num_grads", "damp", "buffer_dtype", "check_memory",
                  "weight_decay_mode", "momentum_mode"} & set(param_group)
        if shared:
            raise ValueError(f"{sorted(shared)} belong to the one shared buffer: set them in "
                             f"MFAC(...), not per param group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in ("lr", "momentum", "weight_decay"):
            if not group[key] >= 0.0:
                raise ValueError(f"{key} must be >= 0, got {group[key]}")

    @staticmethod
    def buffer_bytes(num_params: int, num_grads: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the (num_grads, num_params) gradient buffer."""
        return num_grads * num_params * dtype.itemsize

    def _slices(self):
        """(group, param, slice of the flat vector) for every parameter, in order."""
        start = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p, slice(start, start + p.numel())
                start += p.numel()

    def _matvec(self, v):
        """G @ v: (m, d) @ (d,) -> (m,), in float32."""
        out = torch.zeros(self.grads.shape[0], dtype=torch.float32, device=v.device)
        for s in range(0, v.numel(), self._chunk):
            out += self.grads[:, s:s + self._chunk].float() @ v[s:s + self._chunk]
        return out

    def _rmatvec(self, x):
        """G^T @ x: (d, m) @ (m,) -> (d,), in float32."""
        d = self.grads.shape[1]
        return torch.cat([self.grads[:, s:s + self._chunk].float().T @ x
                          for s in range(0, d, self._chunk)])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if all(p.grad is None for _, p, _ in self._slices()):
            return loss
        m = self.grads.shape[0]
        j = self.num_steps % m

        # 1. g = the newest gradient, all parameters flattened (grad None -> zeros), plus
        #    weight_decay * p in "preconditioned" mode; written into ring row j (the oldest
        #    gradient drops out once the ring is full)
        row = self.grads[j]
        for group, p, s in self._slices():
            if p.grad is None:
                row[s].zero_()
            elif p.grad.is_sparse:
                raise RuntimeError("M-FAC does not support sparse gradients")
            elif group["weight_decay"] and self.weight_decay_mode == "preconditioned":
                row[s].copy_(torch.add(p.grad, p, alpha=group["weight_decay"]).reshape(-1))
            else:
                row[s].copy_(p.grad.reshape(-1))
        g = row.float()  # (d,) as stored (rounded to buffer_dtype)

        # 2. only row and column j of K = G G^T changed: K[j, :] = K[:, j] = G g      O(m d)
        k = self._matvec(g)
        self.gram[j, :] = k
        self.gram[:, j] = k

        # 3.-4. u = F^{-1} g (module docstring): a (m,) float32 solution x of (m*damp*I + K) x = e_j,
        #       then u = m * G^T x, (d,) float32; self.gram is K (m, m), self.damp is damp
        # BEGIN EXERCISE mfac
        # 3. solve (m*damp*I + K) x = e_j                                           O(m^3)
        #    LU (torch.linalg.solve, CPU and CUDA) rather than Cholesky: K is rounded in
        #    float32 and with damp=1e-6 the shift may not cover that, so the matrix can be
        #    a hair indefinite; pivoted LU does not mind.
        a = self.gram.clone()
        a.diagonal().add_(m * self.damp)
        e_j = torch.zeros(m, dtype=torch.float32, device=a.device)
        e_j[j] = 1.0
        x = torch.linalg.solve(a, e_j)

        # 4. the preconditioned gradient F^{-1} g = m * G^T x                         O(m d)
        u = m * self._rmatvec(x)
        # END EXERCISE mfac

        # 5. per parameter: decoupled weight decay (that mode only), momentum, step
        if self.momentum_buffer is None and any(gr["momentum"] for gr in self.param_groups):
            self.momentum_buffer = torch.zeros_like(u)
        for group, p, s in self._slices():
            if p.grad is None:
                continue
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            if wd and self.weight_decay_mode == "decoupled":
                p.mul_(1.0 - lr * wd)  # p <- p - lr * wd * p
            v = u[s]
            if mu:  # average: v <- mu v + (1 - mu) F^{-1} g;  heavy_ball: v <- mu v + F^{-1} g
                weight = 1.0 - mu if self.momentum_mode == "average" else 1.0
                v = self.momentum_buffer[s].mul_(mu).add_(u[s], alpha=weight)
            p.add_(v.view_as(p), alpha=-lr)  # p <- p - lr * v

        self.num_steps += 1
        return loss

    def state_dict(self):
        state = super().state_dict()  # param_groups (lr, momentum, weight_decay); no per-param state
        state["mfac"] = {"grads": self.grads, "gram": self.gram, "num_steps": self.num_steps,
                         "momentum_buffer": self.momentum_buffer, "momentum_mode": self.momentum_mode}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("mfac")
        if tuple(saved["grads"].shape) != tuple(self.grads.shape):
            raise ValueError(f"saved M-FAC buffer is {tuple(saved['grads'].shape)} (m, d) but this "
                             f"optimizer's is {tuple(self.grads.shape)}: use the same params and num_grads")
        # an average and a heavy-ball v differ by a factor 1 - momentum: refuse to mix them
        saved_mode = saved.get("momentum_mode", MFAC_MOMENTUM_MODE)  # a state saved without one: run/compat.py
        if saved["momentum_buffer"] is not None and saved_mode != self.momentum_mode:
            raise ValueError(f"saved M-FAC momentum is {saved_mode!r} but this optimizer's momentum_mode "
                             f"is {self.momentum_mode!r}: pass momentum_mode={saved_mode!r} to resume")
        super().load_state_dict(state_dict)
        self.grads.copy_(saved["grads"])  # copy_ keeps this optimizer's device and buffer_dtype
        self.gram.copy_(saved["gram"])
        self.num_steps = int(saved["num_steps"])
        buf = saved["momentum_buffer"]
        self.momentum_buffer = None if buf is None else buf.to(self.gram.device, torch.float32, copy=True)
