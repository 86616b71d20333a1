"""The one list of exercises: for each id, where its code is, what it implements, what it
builds on, and which tests grade it.

A test belongs to an exercise when `file::name` matches one of its `tests` patterns: `*` is
the only wildcard, and a pattern without `[...]` matches every parametrization of a test.
tests/conftest.py turns that into a pytest marker named by the id (`pytest -m attention`);
no test file names an exercise itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

TOUR = "docs/TOUR.md"  # the students' tour; each exercise names its section
REFS = "tests/test_exercise_refs.py"  # the stored-reference tests, one group per exercise


@dataclass(frozen=True)
class Exercise:
    id: str
    file: str  # relative to the repository root
    functions: tuple[str, ...]  # qualified names; every region of this id lies in one of them
    section: str  # its section of docs/TOUR.md, "3. The encoder"
    paper: str
    equation: str
    builds_on: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()  # "test_file.py::test_name_pattern"
    advanced: bool = False

    @property
    def where(self) -> str:
        return f"{', '.join(self.functions)} in {self.file}"


EXERCISES = {e.id: e for e in [
    Exercise("embeddings", "minbert/model.py", ("BertEmbeddings.forward",), "3. The encoder",
             "Devlin et al. 2019, section 3.2 (Figure 2)",
             "LayerNorm(word(x_t) + position(t) + token_type(s_t)), then dropout",
             tests=("test_exercise_refs.py::test_embeddings_*",)),
    Exercise("attention", "minbert/model.py", ("BertSelfAttention.forward",), "3. The encoder",
             "Vaswani et al. 2017, eq. 1",
             "softmax(Q K^T / sqrt(d_k) + mask) V, per head",
             tests=("test_exercise_refs.py::test_attention_*",)),
    Exercise("layer", "minbert/model.py",
             ("BertAddNorm.forward", "BertAttention.forward", "BertIntermediate.forward", "BertLayer.forward"),
             "3. The encoder", "Vaswani et al. 2017, section 3.1 and eq. 2 (post-LayerNorm, as BERT)",
             "h = LayerNorm(x + W_o Attention(x)); LayerNorm(h + W_2 GELU(W_1 h))",
             builds_on=("attention",), tests=("test_exercise_refs.py::test_layer_*",)),
    Exercise("pooling", "minbert/pooling.py", ("cls", "mean", "max"), "4. Pooling",
             "Reimers & Gurevych 2019, section 3 (CLS, MEAN, MAX)",
             "h_[CLS]; sum_t m_t h_t / sum_t m_t; max over real tokens",
             tests=("test_pooling.py::test_cls_pooling_*", "test_pooling.py::test_mean_pooling_*",
                    "test_pooling.py::test_max_pooling_*", "test_exercise_refs.py::test_pooling_*")),
    Exercise("cosine_heads", "minbert/heads.py",
             ("CosEmb.forward", "CosEmb.loss", "CosD.forward", "Cos2d1.forward"), "5. Task heads",
             "Cortes, Hsieh & Fu, section 4.3 (experiments 2a, 2bi, 2bii)",
             "cos(u, v) with CosineEmbeddingLoss; 5 sigmoid(20 cos(W u + b, W v + b)); Linear([u; v; cos(u, v)])",
             builds_on=("pooling",),
             # the head-formula tests; they move with tests/test_heads.py
             tests=("test_heads.py::test_cos_*", "test_exercise_refs.py::test_cosine_heads_*")),
    Exercise("adamw", "minbert/optim/adamw.py", ("AdamW._update",), "7. AdamW",
             "Loshchilov & Hutter 2019, Algorithm 2, lines 6-12",
             "p <- (1 - lr wd) p - lr m_hat / (sqrt(v_hat) + eps)",
             tests=("test_adamw.py::test_adamw_*[loop]", "test_exercise_refs.py::test_adamw_*")),
    Exercise("pcgrad", "minbert/pcgrad.py", ("project_conflicting",), "8. PCGrad",
             "Yu et al. 2020, Algorithm 1, lines 2-7",
             "if g_i . g_j < 0: g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j",
             tests=("test_pcgrad.py::test_*", "test_exercise_refs.py::test_pcgrad_*")),
    Exercise("smart", "minbert/smart.py", ("_library_step", "_paper_step", "smart_regularizer"), "9. SMART",
             "Jiang et al. 2020, eq. 3 and Algorithm 1 (the library reading: smart-pytorch's SMARTLoss)",
             "R_s = l_s(f(x + nu), f(x)), nu <- (nu + eta g) / (||nu + eta g||_inf + eps) per token",
             tests=("test_smart.py::test_regularizer_*", "test_smart.py::test_gradients_reach_*",
                    "test_smart.py::test_ascent_*",
                    "test_smart.py::test_smart_*", "test_exercise_refs.py::test_smart_*")),
    Exercise("expected_max", "minbert/sweep/seeds.py", ("expected_max",), "14. Seeds",
             "Dodge et al. 2019, eq. 1",
             "E[max] = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n), v sorted",
             tests=("test_seeds.py::test_expected_max_by_hand", "test_seeds.py::test_expected_max_std_by_hand",
                    "test_seeds.py::test_expected_max_matches_monte_carlo", "test_seeds.py::test_expected_max_is_*",
                    "test_seeds.py::test_expected_max_ties_*", "test_seeds.py::test_expected_max_curve_*",
                    "test_seeds.py::test_full_training_baseline",
                    "test_exercise_refs.py::test_expected_max_*")),
    Exercise("mfac", "minbert/optim/mfac.py", ("MFAC.step",), "10. M-FAC",
             "Frantar, Kurtic & Alistarh 2021 (Woodbury form in the module docstring)",
             "F^-1 g = m G^T x with (m damp I + G G^T) x = e_j",
             builds_on=("adamw",), advanced=True,
             tests=("test_mfac.py::test_matches_explicit_inverse", "test_mfac.py::test_small_damp_*",
                    "test_mfac.py::test_momentum_is_an_average_of_updates", "test_exercise_refs.py::test_mfac_*")),
]}


def name_pattern(glob: str) -> re.Pattern:
    """A test-name glob as a regex: `*` matches anything, every other character itself."""
    return re.compile(".*".join(map(re.escape, glob.split("*"))) + r"\Z")


_PATTERNS = {e.id: [(f, name_pattern(t)) for f, _, t in (p.partition("::") for p in e.tests)]
             for e in EXERCISES.values()}


def exercises_of(test_file: str, test_name: str) -> list[str]:
    """Ids of the exercises a test belongs to: test_file "test_adamw.py", test_name
    "test_adamw_bias_correction[loop]"."""
    bare = test_name.split("[")[0]
    return [ex for ex, patterns in _PATTERNS.items()
            if any(f == test_file and (p.match(test_name) or p.match(bare)) for f, p in patterns)]


def test_files(ids) -> list[str]:
    """The test files (names under tests/) that hold the tests of these exercises."""
    return sorted({p.partition("::")[0] for ex in ids for p in EXERCISES[ex].tests})


def with_prerequisites(ids) -> list[str]:
    """ids and everything they build on, in registry order."""
    wanted, todo = set(), list(ids)
    while todo:
        ex = todo.pop()
        if ex not in wanted:
            wanted.add(ex)
            todo.extend(EXERCISES[ex].builds_on)
    return [ex for ex in EXERCISES if ex in wanted]
