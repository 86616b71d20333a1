"""What only a CUDA device can show (`pytest -m cuda`; the GPU day runs them first,
minbert/gpu/day.py): the encoder against Hugging Face's saved outputs on CUDA in float32 and
under bf16 autocast, and a resumed run on CUDA ending bit for bit where an uninterrupted one
does. (M-FAC on CUDA against the CPU: tests/test_mfac.py, test_cuda_matches_cpu.) Each skips
with a reason where there is no CUDA device."""
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES
from minbert import BertModel
from test_training import RESUME_CASES, check_resume_matches_uninterrupted_run

# cuBLAS picks reduction orders per call unless given a fixed workspace; read when CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def float32_matmuls():
    """Full float32 matrix products (no TF32), whatever a run set before."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def encode_reference(model, ref, batch, bf16):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(*(ref[f"{batch}.{k}"].cuda() for k in ("input_ids", "attention_mask", "token_type_ids")))
    real = ref[f"{batch}.attention_mask"].bool()
    return out.last_hidden_state.float().cpu()[real], ref[f"{batch}.last_hidden_state"][real], out, real


@pytest.mark.parametrize("batch", ["single", "pair"])
def test_minilm_matches_transformers_on_cuda_in_float32(minilm_dir, batch, float32_matmuls):
    model = BertModel.from_pretrained(minilm_dir).cuda().eval()
    ref = load_file(str(FIXTURES / "minilm_reference.safetensors"))
    got, want, out, _ = encode_reference(model, ref, batch, bf16=False)
    # The same arithmetic as on the CPU (1e-5 there), summed in cuBLAS's order: 1e-4.
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0,
                               msg=lambda m: f"BertModel.forward on CUDA, float32, differs from transformers: {m}")
    torch.testing.assert_close(out.pooler_output.cpu(), ref[f"{batch}.pooler_output"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch", ["single", "pair"])
def test_minilm_matches_transformers_on_cuda_under_bf16_autocast(minilm_dir, batch):
    model = BertModel.from_pretrained(minilm_dir).cuda().eval()
    ref = load_file(str(FIXTURES / "minilm_reference.safetensors"))
    got, want, _, _ = encode_reference(model, ref, batch, bf16=True)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per operation). Under CPU autocast
    # (2026-11-30, this file's first version) the same comparison gave a relative error of
    # 0.0074 / 0.0071 (single / pair) over all real tokens and a smallest per-token cosine of
    # 0.99993. CUDA's kernels round at other places in the sums, so the bound is 4x the CPU's
    # error, still far below what a wrong scale or mask would give (errors of order 1).
    rel = ((got - want).norm() / want.norm()).item()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()
    assert rel < 0.03 and cos > 0.999, (
        f"BertModel.forward under bf16 autocast on CUDA is {rel:.4f} away from transformers' float32 output "
        f"(relative norm; at most 0.03 expected), smallest token cosine {cos:.5f} (at least 0.999 expected)")


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_matches_uninterrupted_run_on_cuda(case, tiny_model, tiny_data, tmp_path, deterministic):
    """Checkpoints keep CUDA's random state (dropout, SMART's noise) as they keep the CPU's."""
    check_resume_matches_uninterrupted_run(case, tiny_model, tiny_data, tmp_path, "cuda")
