import math

import pytest
import torch

from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means


def _random_embeddings(m: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(z, dim=1)


def _random_disjoint_masks(m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each off-diagonal pair is positive, negative or ignored; several positives per anchor."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (m, m), generator=g)  # 0 positive, 1 negative, 2 in neither mask
    pos = kind == 0
    neg = kind == 1
    pos[0] = False  # anchor 0 has no positive: must contribute 0 and leave the mean
    pos[1] = False
    pos[1, 2] = True  # anchor 1 has exactly one positive
    neg[1, 2] = False
    pos.fill_diagonal_(True)  # the diagonal must be ignored whatever the masks say
    neg.fill_diagonal_(True)
    return pos, neg


def _naive_info_nce(
    z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float
) -> list[float]:
    m = z.shape[0]
    losses = []
    for i in range(m):
        positives = [j for j in range(m) if j != i and pos[i, j]]
        denominator = [j for j in range(m) if j != i and (pos[i, j] or neg[i, j])]
        if not positives:
            losses.append(0.0)
            continue
        total = sum(math.exp(float(z[i] @ z[a]) / tau) for a in denominator)
        terms = [math.log(math.exp(float(z[i] @ z[p]) / tau) / total) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return losses


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_info_nce_matches_naive_loop(seed: int, tau: float) -> None:
    z = _random_embeddings(12, 5, seed)
    pos, neg = _random_disjoint_masks(12, seed)
    expected = torch.tensor(_naive_info_nce(z, pos, neg, tau), dtype=torch.float64)

    per_anchor = info_nce(z, pos, neg, tau, reduction="none")
    assert per_anchor.shape == (12,)
    torch.testing.assert_close(per_anchor, expected, rtol=1e-5, atol=1e-5)
    assert per_anchor[0] == 0

    has_pos = (pos & ~torch.eye(12, dtype=torch.bool)).any(dim=1)
    torch.testing.assert_close(info_nce(z, pos, neg, tau), expected[has_pos].mean())
    torch.testing.assert_close(info_nce(z, pos, neg, tau, reduction="sum"), expected.sum())


def test_info_nce_without_any_positive_is_zero_and_differentiable() -> None:
    z = _random_embeddings(6, 3, 0).requires_grad_()
    pos = torch.zeros(6, 6, dtype=torch.bool)
    neg = ~torch.eye(6, dtype=torch.bool)
    loss = info_nce(z, pos, neg, 0.5)
    loss.backward()
    assert loss.item() == 0.0
    assert z.grad is not None and torch.all(z.grad == 0)


def test_info_nce_is_stable_at_tiny_temperature() -> None:
    z = _random_embeddings(8, 4, 3).float().requires_grad_()
    pos = torch.zeros(8, 8, dtype=torch.bool)
    pos[0, 1] = True
    neg = torch.zeros(8, 8, dtype=torch.bool)
    neg[0, 2:] = True
    neg[3, 4] = True  # an anchor with negatives but no positive
    loss = info_nce(z, pos, neg, 1e-3)
    loss.backward()
    assert torch.isfinite(loss)
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_info_nce_rejects_overlapping_masks() -> None:
    z = _random_embeddings(4, 3, 0)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = True
    with pytest.raises(ValueError, match="overlap"):
        info_nce(z, pos, pos.clone(), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"reduction": "max"}, "reduction"),
        ({"pos_mask": torch.zeros(4, 4)}, "pos_mask"),
        ({"neg_mask": torch.zeros(3, 3, dtype=torch.bool)}, "neg_mask"),
    ],
)
def test_info_nce_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "z": _random_embeddings(4, 3, 0),
        "pos_mask": torch.zeros(4, 4, dtype=torch.bool),
        "neg_mask": torch.zeros(4, 4, dtype=torch.bool),
        "temperature": 0.5,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        info_nce(**args)  # type: ignore[arg-type]


def test_normalize_views_is_view_major_and_unit_norm() -> None:
    outputs = torch.randn(3, 4, 5, dtype=torch.float64)
    z = normalize_views(outputs)
    assert z.shape == (12, 5)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(12, dtype=torch.float64))
    for v in range(3):
        for b in range(4):
            torch.testing.assert_close(z[v * 4 + b], outputs[v, b] / outputs[v, b].norm())


def test_pair_similarity_means_on_constructed_points() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    means = pair_similarity_means(z.requires_grad_(), pos, neg)
    assert means["pos_sim"].item() == pytest.approx(1.0)
    assert means["neg_sim"].item() == pytest.approx(0.0)
    assert not means["pos_sim"].requires_grad
    empty = pair_similarity_means(z, torch.zeros_like(pos), neg)
    assert empty["pos_sim"].item() == 0.0


def test_info_nce_promotes_half_precision_similarities() -> None:
    z = _random_embeddings(16, 8, 5).float()
    pos, neg = _random_disjoint_masks(16, 5)
    reference = info_nce(z, pos, neg, 0.1)
    low = info_nce(z.bfloat16(), pos, neg, 0.1)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05)
