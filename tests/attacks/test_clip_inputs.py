"""Attacks and the linear probe on a toy clip model: 5-D inputs, the eps ball over every frame."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, fgsm, pgd
from cslrobust.attacks.checks import check_perturbation
from cslrobust.attacks.threat_model import Norm, perturbation_norm
from cslrobust.models import Classifier, LinearHead, build_encoder
from cslrobust.probe.features import extract_features
from cslrobust.probe.linear import train_linear_probe
from cslrobust.seeding import make_generator, rng_scope

N_CLASSES, T, S = 3, 4, 16


def _encoder() -> nn.Module:
    with rng_scope(0):
        return build_encoder(
            "r3d_18",
            width=4,
            head_kind="none",
            num_classes=N_CLASSES,
            proj_hidden_dim=8,
            proj_dim=8,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
        )


def _clips(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Class c: a class colour tint on every frame plus per-pixel noise; extremes at the box edges."""
    generator = make_generator(seed, "clips")
    labels = torch.arange(n) % N_CLASSES
    tint = torch.eye(3)[labels].view(n, 3, 1, 1, 1)
    noise = torch.rand(n, 3, T, S, S, generator=generator)
    clips = (0.6 * tint + 0.4 * noise).clamp(0, 1)
    clips[: n // 4, 0, 0] = 0.0
    clips[n // 4 : n // 2, 2, -1] = 1.0
    return clips, labels


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    encoder = _encoder()
    with rng_scope(1):
        head = LinearHead(encoder.feature_dim, N_CLASSES)
    return Classifier(encoder, head).eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_clips_stays_in_the_ball_over_all_frames_and_the_box(
    classifier: Classifier, norm: Norm
) -> None:
    x, y = _clips(8, 0)
    target = AttackTarget(classifier)
    eps = 8 / 255 if norm == "linf" else 0.5
    x_adv = pgd(
        target, x, y, eps=eps, step_size=eps / 2, steps=3, norm=norm, random_start=True,
        restarts=2, generator=make_generator(0, "attack"),
    )  # fmt: skip
    assert x_adv.shape == x.shape
    check_perturbation(x, x_adv, eps, norm)
    delta = (x_adv.double() - x.double()).flatten(1)
    if norm == "linf":  # one radius for every pixel of every frame
        assert delta.abs().max() <= eps + 1e-6
        assert (delta.abs().amax(dim=1) > eps / 2).all()  # every clip was really perturbed
    else:  # the L2 ball of the whole clip, not of each frame
        assert perturbation_norm(x_adv.double() - x.double(), "l2").max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    frames_moved = (x_adv - x).abs().amax(dim=(1, 3, 4)) > 0  # (B, T)
    assert frames_moved.all()  # the attack uses every frame


def test_eps_zero_and_fgsm_on_clips(classifier: Classifier) -> None:
    x, y = _clips(6, 1)
    target = AttackTarget(classifier)
    same = pgd(
        target, x, y, eps=0.0, step_size=0.1, steps=2, random_start=True, restarts=2,
        generator=make_generator(1, "attack"),
    )  # fmt: skip
    assert torch.equal(same, x)
    x_adv = fgsm(target, x, y, eps=4 / 255)
    check_perturbation(x, x_adv, 4 / 255, "linf")
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_linear_probe_on_a_toy_clip_model() -> None:
    encoder = _encoder()
    train, train_labels = _clips(60, 2)
    val, val_labels = _clips(30, 3)
    to_uint8 = lambda c: (c * 255).round().to(torch.uint8)  # noqa: E731
    features = extract_features(
        encoder.features, encoder, to_uint8(train), batch_size=16, device="cpu"
    )
    val_features = extract_features(
        encoder.features, encoder, to_uint8(val), batch_size=16, device="cpu"
    )
    assert features.shape == (60, encoder.feature_dim) and encoder.training  # mode restored
    result = train_linear_probe(
        features, train_labels, val_features, val_labels, num_classes=N_CLASSES, epochs=30,
        lr=0.5, weight_decay=0.0, batch_size=20, seed=0,
    )  # fmt: skip
    classifier = Classifier(encoder, result.head).eval()
    with torch.no_grad():
        accuracy = (classifier(val).argmax(1) == val_labels).float().mean().item()
    assert accuracy >= 0.9, accuracy  # the tint is linearly readable from random 3D-conv features


def test_autoattack_on_clips_runs_every_standard_attack_in_the_ball(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cslrobust.attacks.autoattack import AutoAttackBudget, run_autoattack

    encoder = _encoder()
    with rng_scope(1):  # 4 classes: APGD-T's targeted DLR loss needs them
        classifier = Classifier(encoder, LinearHead(encoder.feature_dim, 4)).eval()

    x, y = _clips(6, 2)
    eps = 8 / 255
    budget = AutoAttackBudget(n_iter=3, n_restarts=1, n_target_classes=2, n_queries=20)
    kwargs = {"eps": eps, "norm": "linf", "version": "standard", "seed": 0, "batch_size": 4}
    result = run_autoattack(
        AttackTarget(classifier), x, y, budget=budget, state_dir=tmp_path / "aa", **kwargs
    )
    # APGD-CE, APGD-T, FAB-T and Square (whose patches need (N, C, H, W)) all ran on the clips.
    assert result.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert result.x_adv.shape == x.shape
    delta = (result.x_adv - x).flatten(1).abs().amax(1)
    assert float(delta.max()) <= eps + 1e-6 and 0.0 <= float(result.x_adv.min())
    assert float(result.x_adv.max()) <= 1.0
    # Every sample it calls fooled is misclassified by the clip model itself.
    with torch.no_grad():
        predicted = classifier(result.x_adv).argmax(1)
    fooled = result.clean_correct & ~result.robust_correct
    assert torch.equal(
        predicted[fooled] != y[fooled], torch.ones(int(fooled.sum()), dtype=torch.bool)
    )
    assert result.robust_accuracy <= result.clean_accuracy
    again = run_autoattack(  # resumed from the state folder: the same result
        AttackTarget(classifier), x, y, budget=budget, state_dir=tmp_path / "aa", **kwargs
    )
    assert torch.equal(again.robust_correct, result.robust_correct)
    assert torch.equal(again.x_adv, result.x_adv)
    assert again.resumed_batches > 0
