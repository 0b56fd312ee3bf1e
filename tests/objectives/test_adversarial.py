"""Adversarial contrastive pre-training (ACL, RoCL, DynACL): attack policy, dual BN, schedules, losses."""

from __future__ import annotations

import pytest
import torch
from tests.training.conftest import toy_setup

from cslrobust.attacks.ascent import ViewAttack
from cslrobust.augment import (
    AUGMENTATIONS,
    ScheduledViews,
    SimCLRAugmentSection,
    build_augment,
)
from cslrobust.config import RunConfig
from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    OBJECTIVES,
    AdversarialContrastiveMethod,
    build_method,
    build_objective,
    dynacl_adversarial_weight,
    dynacl_strength,
    family_of,
)
from cslrobust.seeding import make_generator
from cslrobust.training.loop import _ViewRunner


def _method(name: str, **params: object) -> AdversarialContrastiveMethod:
    torch.manual_seed(0)
    section = OBJECTIVES.section(name, **params)
    _, encoder, _ = toy_setup("simclr")
    method = build_method(build_objective(section), encoder)
    assert isinstance(method, AdversarialContrastiveMethod)
    method.set_total_epochs(4)
    return method


def _batch(b: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = make_generator(0, "batch")
    images = torch.rand(b, 3, 16, 16, generator=g)
    views = build_augment(SimCLRAugmentSection())(images, 2)
    return views, torch.arange(b), torch.arange(b) % 4


def _runner(b: int, steps: int = 2) -> _ViewRunner:
    attack = ViewAttack(eps=8 / 255, step_size=2 / 255, steps=steps)
    return _ViewRunner(2, b, "fp32", attack, (0, 0, 1, 0))


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in module.state_dict().items() if "running" in k or "tracked" in k
    }


def test_attack_generation_changes_no_statistic_and_no_parameter_gradient():
    method = _method("acl")
    views, index, _ = _batch()
    network = method.network()
    network.train()
    before = _bn_state(network)
    adv = method._attack(_runner(8), views, None, index)
    after = _bn_state(network)
    assert before.keys() == after.keys() and len(before) > 10  # both branches
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(p.grad is None for p in network.parameters())
    assert network.training  # the mode is restored
    assert float((adv - views).abs().max()) <= 8 / 255 + 1e-7
    assert adv.min() >= 0 and adv.max() <= 1 and not torch.equal(adv, views)


def test_dual_bn_keeps_the_clean_branch_untouched_by_adversarial_batches():
    method = _method("acl")
    assert method.dual is not None
    views, index, labels = _batch()
    network = method.network()
    network.train()
    encoder_keys = set(method.encoder.state_dict())
    clean_before = {k: v.clone() for k, v in method.dual.other.state_dict().items()}
    adversarial_before = _bn_state(method.encoder)
    runner = _runner(8)
    method._outputs(runner, network, views, "adversarial")  # an adversarial batch
    for key, value in method.dual.other.state_dict().items():
        assert torch.equal(value, clean_before[key]), key  # the clean branch saw nothing
    changed = [
        k for k, v in _bn_state(method.encoder).items() if not torch.equal(v, adversarial_before[k])
    ]
    assert any("running_mean" in k for k in changed)  # the adversarial branch did
    adversarial_now = _bn_state(method.encoder)
    method._outputs(runner, network, views, "clean")  # and a clean batch moves only the clean one
    for key, value in _bn_state(method.encoder).items():
        assert torch.equal(value, adversarial_now[key]), key
    assert not all(
        torch.equal(v, clean_before[k]) for k, v in method.dual.other.state_dict().items()
    )
    # The encoder's weights are an ordinary encoder (the evaluated branch), before and after.
    assert set(method.encoder.state_dict()) == encoder_keys
    assert not any("other" in k for k in encoder_keys)


def test_the_evaluated_branch_can_be_the_clean_one():
    method = _method("acl", evaluate_bn="clean")
    views, index, _ = _batch()
    network = method.network()
    network.train()
    in_encoder = _bn_state(method.encoder)
    method._outputs(_runner(8), network, views, "clean")
    assert any(not torch.equal(v, in_encoder[k]) for k, v in _bn_state(method.encoder).items())


def test_dual_stream_loss_is_the_mean_of_the_clean_and_adversarial_losses():
    method = _method("acl")
    views, index, labels = _batch()
    method.network().train()
    out = method.loss(_runner(8), method.network(), views, index, labels, generator=None, epoch=0)
    m = out.metrics
    assert torch.allclose(out.loss.detach(), (m["loss_clean"] + m["loss_adv"]) / 2)
    assert m["loss_adv"] > m["loss_clean"]  # the attack raised the loss it trains on
    out.loss.backward()
    assert all(p.grad is not None for p in method.network().parameters())


def test_dynacl_weights_its_losses_by_the_schedule():
    method = _method("dynacl", stage_epochs=1)
    views, index, labels = _batch()
    method.network().train()
    out = method.loss(_runner(8), method.network(), views, index, labels, generator=None, epoch=2)
    m = out.metrics
    w = dynacl_adversarial_weight(2, 4, 1, 2 / 3)
    assert float(m["adv_weight"]) == pytest.approx(w)
    assert torch.allclose(out.loss.detach(), ((2 - w) * m["loss_clean"] + w * m["loss_adv"]) / 2)
    assert float(m["augment_strength"]) == pytest.approx(dynacl_strength(2, 4, 1))


@pytest.mark.parametrize("variant", ["a2a", "a2s"])
def test_acl_single_stream_variants_train(variant: str):
    method = _method("acl", variant=variant, dual_bn=variant == "a2s")
    views, index, labels = _batch()
    method.network().train()
    out = method.loss(_runner(8), method.network(), views, index, labels, generator=None, epoch=0)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_rocl_is_three_view_nt_xent_plus_its_regulariser():
    method = _method("rocl")
    assert method.dual is None
    views, index, labels = _batch()
    method.network().train()
    out = method.loss(_runner(8), method.network(), views, index, labels, generator=None, epoch=0)
    m = out.metrics
    assert torch.allclose(out.loss.detach(), m["loss_contrastive"] + m["loss_reg"] / 256)


def test_false_negative_removal_composes_with_every_adversarial_method():
    for name in ("acl", "rocl", "dynacl"):
        method = _method(name, fn={"detector": "oracle", "mode": "attract"})
        views, index, labels = _batch()
        method.network().train()
        out = method.loss(
            _runner(8), method.network(), views, index, labels, generator=None, epoch=0
        )
        assert float(out.metrics["fn_precision"]) == 1.0  # the oracle
        assert float(out.metrics["fn_recall"]) == 1.0
        assert family_of(OBJECTIVES.section(name, fn={"detector": "topk", "k": 3})) == (
            "adversarial_fn_removal"
        )
        assert family_of(OBJECTIVES.section(name)) == "adversarial"


def _official_dynacl_schedule(total: int, period: int, swap: float) -> list[tuple[float, float]]:
    """The official loop (PKU-ML/DYNACL train_DynACL.py), 1-based epochs, as (strength, weight)."""
    out, strength = [], None
    for epoch in range(1, total + 1):
        if epoch % period == 1 or period == 1:
            strength = 1 - (epoch - 1) / total
        weight = min(1.0 + (epoch // period) * (period / total) * swap, 2)
        out.append((strength, weight))
    return out


@pytest.mark.parametrize(("total", "period"), [(1000, 50), (12, 4), (10, 3), (5, 1)])
def test_dynacl_schedules_follow_the_official_formulas(total: int, period: int):
    official = _official_dynacl_schedule(total, period, 2 / 3)
    for epoch, (strength, weight) in enumerate(official):
        assert dynacl_strength(epoch, total, period) == pytest.approx(strength)
        assert dynacl_adversarial_weight(epoch, total, period, 2 / 3) == pytest.approx(weight)
    assert dynacl_strength(0, 1000, 50) == 1.0
    assert dynacl_strength(999, 1000, 50) == pytest.approx(0.05)


def test_scheduled_views_scale_the_simclr_strengths():
    section = SimCLRAugmentSection()
    assert section.at_strength(1.0) == section
    weak = section.at_strength(0.0)
    assert weak.crop_scale == (1.0, 1.0) and weak.jitter == (0, 0, 0, 0)
    assert weak.jitter_p == 0 and weak.grayscale_p == 0 and weak.flip_p == section.flip_p
    half = section.at_strength(0.5)
    assert half.crop_scale == pytest.approx((0.6, 1.0))
    views = ScheduledViews(section, lambda epoch: 1.0 - epoch / 2)
    views.set_epoch(2)
    images = torch.rand(4, 3, 16, 16)
    out = views(images, 2)  # strength 0: whole image, no colour change; only flips remain
    flipped = images.flip(-1)
    for v in range(2):
        for i in range(4):
            row = out[v * 4 + i]
            assert torch.allclose(row, images[i], atol=1e-5) or torch.allclose(
                row, flipped[i], atol=1e-5
            )
    with pytest.raises(ConfigError, match="no strengths to anneal"):
        ScheduledViews(AUGMENTATIONS.section("crop_flip"), lambda e: 1.0)


def test_config_of_the_adversarial_objectives():
    base = {"model": {"width": 8}}
    cfg = RunConfig.model_validate(
        {**base, "objective": {"name": "acl", "fn": {"detector": "oracle"}}}
    )
    assert cfg.objective.attack.eps == 8 / 255 and cfg.objective.attack.steps == 5
    dumped = cfg.model_dump(mode="json")["objective"]
    assert dumped["attack"]["eps"] == "8/255"
    with pytest.raises(Exception, match="variant"):
        RunConfig.model_validate({**base, "objective": {"name": "acl", "variant": "x"}})
    rocl = RunConfig.model_validate({**base, "objective": {"name": "rocl"}})
    assert rocl.objective.attack.steps == 7
    assert rocl.run_id() != cfg.run_id()
