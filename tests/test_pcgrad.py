"""PCGrad (minbert/pcgrad.py): hand-computed projections and the .grad it writes."""
import torch
from torch import nn

from minbert.pcgrad import pcgrad, pcgrad_backward, project_conflicting, task_gradients


def _t(*rows):
    return [[torch.tensor(r, dtype=torch.float32)] for r in rows]  # one param per task


def test_two_conflicting_tasks_by_hand():
    # g1 . g2 = -1 < 0: g1' = g1 - (-1/2) g2 = [0.5, 0.5]; g2' = g2 - (-1/1) g1 = [0, 1]
    (out,) = pcgrad(_t([1.0, 0.0], [-1.0, 1.0]))
    assert torch.allclose(out, torch.tensor([0.5, 1.5]))
    (mean,) = pcgrad(_t([1.0, 0.0], [-1.0, 1.0]), reduction="mean")
    assert torch.allclose(mean, torch.tensor([0.25, 0.75]))


def test_agreeing_gradients_are_summed_unchanged():
    grads = _t([1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 3.0])  # all pairwise dots >= 0
    (out,) = pcgrad(grads, torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.tensor([1.5, 3.0, 4.0]))


def test_three_tasks_project_against_original_gradients():
    # g1 = [1,0], g2 = [-1,1], g3 = [0,1]. Against the originals, whatever the order:
    #   g1' = g1 + 1/2 g2 = [0.5, 0.5] (then g1'.g3 = 0.5 >= 0), g2' = g2 + g1 = [0, 1],
    #   g3' = g3 (no conflicts), sum = [0.5, 2.5].
    # Projecting g2 against the already projected g1' = [0.5, 0.5] instead would see
    # g2 . g1' = 0, leave g2 alone and sum to [-0.5, 2.5].
    grads = _t([1.0, 0.0], [-1.0, 1.0], [0.0, 1.0])
    for seed in range(6):
        (out,) = pcgrad(grads, torch.Generator().manual_seed(seed))
        assert torch.allclose(out, torch.tensor([0.5, 2.5])), seed


def test_fixed_generator_is_deterministic():
    grads = [[torch.randn(5, generator=torch.Generator().manual_seed(k))] for k in range(4)]
    a = pcgrad(grads, torch.Generator().manual_seed(3))[0]
    b = pcgrad(grads, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_two_tasks_projected_gradient_no_longer_conflicts():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        G = torch.randn(2, 7, generator=gen)
        P = project_conflicting(G)
        dots = P @ G.T  # (2, 2): g_i^PC . g_j
        assert (dots >= -1e-5).all()


def test_zero_gradient_task_is_skipped():
    (out,) = pcgrad(_t([1.0, -2.0], [0.0, 0.0]))
    assert torch.equal(out, torch.tensor([1.0, -2.0]))


def test_shapes_and_unused_params():
    w, b, unused = nn.Parameter(torch.randn(2, 3)), nn.Parameter(torch.randn(3)), nn.Parameter(torch.ones(4))
    x = torch.randn(5, 2)
    losses = [(x @ w + b).sum(), (x @ w).pow(2).sum()]
    grads = task_gradients(losses, [w, b, unused])
    assert [g.shape for g in grads[0]] == [w.shape, b.shape, unused.shape]
    assert torch.equal(grads[1][1], torch.zeros(3))  # b is not in task 2's graph
    assert [g.shape for g in pcgrad(grads)] == [w.shape, b.shape, unused.shape]


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 3)
        self.head_a = nn.Linear(3, 1)
        self.head_b = nn.Linear(3, 2)
        self.head_unused = nn.Linear(3, 1)

    def losses(self, x, y_a, y_b):
        h = torch.tanh(self.trunk(x))  # (B, 3)
        loss_a = nn.functional.mse_loss(self.head_a(h).squeeze(-1), y_a)
        loss_b = nn.functional.cross_entropy(self.head_b(h), y_b)
        return [loss_a, loss_b]


def test_pcgrad_backward_writes_trunk_and_head_grads():
    torch.manual_seed(0)
    model = _TwoHeads()
    x, y_a, y_b = torch.randn(8, 4), torch.randn(8), torch.randint(0, 2, (8,))
    trunk = list(model.trunk.parameters())
    heads = [p for n, p in model.named_parameters() if n.startswith("head")]

    # expected: heads their own task gradient, trunk the PCGrad combination
    loss_a, loss_b = model.losses(x, y_a, y_b)
    exp_a = torch.autograd.grad(loss_a, list(model.head_a.parameters()), retain_graph=True)
    exp_b = torch.autograd.grad(loss_b, list(model.head_b.parameters()))
    exp_trunk = pcgrad(task_gradients(model.losses(x, y_a, y_b), trunk), torch.Generator().manual_seed(1))

    pcgrad_backward(model.losses(x, y_a, y_b), trunk, heads, generator=torch.Generator().manual_seed(1))
    for p, e in zip(model.head_a.parameters(), exp_a):
        assert torch.allclose(p.grad, e)
    for p, e in zip(model.head_b.parameters(), exp_b):
        assert torch.allclose(p.grad, e)
    for p, e in zip(trunk, exp_trunk):
        assert torch.allclose(p.grad, e)
    assert all(p.grad is None for p in model.head_unused.parameters())  # as backward() would leave it


def test_pcgrad_backward_equals_plain_backward_without_conflict():
    torch.manual_seed(0)
    model = _TwoHeads()
    x = torch.randn(8, 4)
    def losses():  # two copies of one task: gradients agree, so PCGrad is the plain sum
        h = model.head_a(torch.tanh(model.trunk(x))).sum()
        return [h, 2 * h]
    sum(losses()).backward()
    plain = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    pcgrad_backward(losses(), model.trunk.parameters(), model.head_a.parameters())
    ours = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(plain) == len(ours)
    for a, b in zip(plain, ours):
        assert torch.allclose(a, b)


# ---------------------------------------------------------------- Algorithm 1, line by line
# Yu et al. 2020, Algorithm 1 (project_conflicting):
#   line 5  if g_i^PC . g_j < 0                                   the conflict test
#   line 7  g_i^PC = g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j       the projection

def test_pcgrad_conflict_test_projects_only_negative_dot_products():
    cases = {"agree (dot 1 > 0)": [[1.0, 0.0], [1.0, 1.0]],
             "orthogonal (dot 0)": [[1.0, 0.0], [0.0, 2.0]],
             "conflict (dot -1 < 0)": [[1.0, 0.0], [-1.0, 1.0]]}
    for name, rows in cases.items():
        G = torch.tensor(rows)
        changed = not torch.equal(project_conflicting(G, torch.Generator().manual_seed(0)), G)
        assert changed == name.startswith("conflict"), (
            f"project_conflicting: gradients that {name} must be "
            f"{'projected' if name.startswith('conflict') else 'left unchanged'}: project g_i only "
            f"when g_i^PC . g_j < 0 (Yu et al. 2020, Algorithm 1 line 5)")


def test_pcgrad_projection_removes_the_conflicting_component():
    # g1 = [1, 0], g2 = [-1, 1], g1 . g2 = -1:
    #   g1^PC = g1 - (-1 / ||g2||^2) g2 = [1, 0] + [-1, 1] / 2 = [0.5, 0.5]
    #   g2^PC = g2 - (-1 / ||g1||^2) g1 = [-1, 1] + [1, 0]     = [0.0, 1.0]
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    P = project_conflicting(G, torch.Generator().manual_seed(0))
    expected = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert torch.allclose(P, expected), (
        f"project_conflicting: a conflicting g_i must become g_i - (g_i . g_j) / ||g_j||^2 g_j, its "
        f"projection onto the normal plane of g_j (Yu et al. 2020, Algorithm 1 line 7): got {P.tolist()}, "
        f"expected {expected.tolist()}")
    # in 7 dimensions, against the formula written out
    gen = torch.Generator().manual_seed(1)
    g1 = torch.randn(7, generator=gen)
    g2 = -g1 + 0.5 * torch.randn(7, generator=gen)  # conflicting
    P = project_conflicting(torch.stack([g1, g2]))
    for i, (gi, gj) in enumerate(((g1, g2), (g2, g1))):
        want = gi - (gi @ gj) / (gj @ gj) * gj
        assert torch.allclose(P[i], want, atol=1e-6), (
            f"project_conflicting: g_{i + 1}^PC must be g_i - (g_i . g_j) / ||g_j||^2 g_j (Yu et al. 2020, "
            f"Algorithm 1 line 7): got {P[i].tolist()}, expected {want.tolist()}")
        assert abs(P[i] @ gj) < 1e-5, (
            f"project_conflicting: after the projection g_{i + 1}^PC . g_j must be 0, got {(P[i] @ gj).item():.3g} "
            f"(Yu et al. 2020, Algorithm 1 line 7)")
