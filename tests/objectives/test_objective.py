import pytest
import torch

from cslrobust.attacks.ascent import ViewAttack
from cslrobust.errors import ConfigError
from cslrobust.models import build_encoder
from cslrobust.objectives import (
    OBJECTIVES,
    LossOutput,
    MethodObjective,
    OracleDetector,
    SimCLRFNRObjective,
    SimCLRObjective,
    SimCLRSection,
    SupervisedSection,
    build_objective,
    load_objective_state,
    objective_needs_bank,
    objective_state,
    refresh_objective,
)
from cslrobust.training.loop import _ViewRunner


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_contract(name: str) -> None:
    """Every registered objective builds with defaults and gives a finite, differentiable loss."""
    objective = build_objective(OBJECTIVES.section(name))
    assert objective.head_kind in ("projector", "classifier")
    assert objective.n_views >= 1
    if isinstance(objective, MethodObjective):
        _method_contract(objective)
        return
    g = torch.Generator().manual_seed(0)
    batch = 8
    outputs = torch.randn(objective.n_views, batch, 10, generator=g, requires_grad=True)
    index = torch.randperm(100, generator=g)[:batch]
    labels = torch.randint(0, 3, (batch,), generator=g)

    out = objective(outputs, index, labels, generator=torch.Generator().manual_seed(1), epoch=5)

    assert isinstance(out, LossOutput)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    out.loss.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all()
    assert outputs.grad.abs().sum() > 0
    assert "loss" in out.metrics
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.shape == (), key
        assert not value.requires_grad and torch.isfinite(value), key

    with pytest.raises(ValueError):
        objective(outputs[:, :-1], index, labels)
    with pytest.raises(ValueError):
        objective(torch.randn(objective.n_views + 1, batch, 10), index, labels)


def _method_contract(objective: MethodObjective) -> None:
    """An objective with its own method: finite loss, gradients in its network, state round trip."""
    torch.manual_seed(0)
    encoder = build_encoder(
        "resnet18",
        width=4,
        head_kind="projector",
        num_classes=3,
        proj_hidden_dim=16,
        proj_dim=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    method = objective.make_method(encoder)
    assert method.encoder is encoder
    params = {id(p) for p in method.network().parameters()}
    assert all(id(p) in params for p in encoder.parameters())  # the encoder is optimised
    batch, n_views = 6, method.n_views
    if hasattr(method, "set_total_epochs"):  # adversarial methods: wired as the train stage does
        method.set_total_epochs(10)
    # The loop's runner (one process), with a view attack for the adversarial methods.
    run = _ViewRunner(n_views, batch, "fp32", ViewAttack(8 / 255, 2 / 255, 2), (0, 0, 1, 0))

    views = torch.rand(n_views * batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = method.loss(
        run, method.network(), views, torch.arange(batch), torch.arange(batch) % 3,
        generator=None, epoch=0,
    )  # fmt: skip
    assert out.loss.shape == () and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in method.network().parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for key, value in out.metrics.items():
        assert value.shape == () and not value.requires_grad and torch.isfinite(value), key
    method.after_step(0, 10)
    method.load_state_dict(method.state_dict())


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_loop_protocol_helpers_accept_every_objective(name: str) -> None:
    """The loop calls the bank/state helpers unconditionally: with defaults no objective needs a
    bank or holds state, and the state round-trips."""
    objective = build_objective(OBJECTIVES.section(name))
    assert not any(objective_needs_bank(objective, epoch) for epoch in range(3))
    bank = torch.randn(20, 10)
    assert refresh_objective(objective, bank, epoch=0, generator=torch.Generator()) == {}
    state = objective_state(objective)
    assert state == {}
    load_objective_state(objective, state)
    with pytest.raises(ValueError):
        load_objective_state(objective, {"unexpected": torch.zeros(1)})


def test_build_objective_passes_the_section_values() -> None:
    assert build_objective(SimCLRSection(temperature=0.2)) == SimCLRObjective(temperature=0.2)
    assert build_objective(OBJECTIVES.section("simclr", temperature=0.2)) == SimCLRObjective(
        temperature=0.2
    )


def test_every_objective_section_declares_its_head_kind() -> None:
    """``load_run`` reads the head kind from the section class of older runs: it must agree."""
    for name in OBJECTIVES.names():
        section = OBJECTIVES.get(name).section
        assert build_objective(section()).head_kind == section.head_kind, name
    assert SupervisedSection.head_kind == "classifier"


def test_objective_sections_reject_unknown_params_by_name() -> None:
    with pytest.raises(ConfigError, match="temprature is not a parameter of objective 'simclr'"):
        OBJECTIVES.section("simclr", temprature=0.2)
    with pytest.raises(ConfigError, match="head_kind is not a parameter of objective"):
        OBJECTIVES.section("supervised", head_kind="projector")
    with pytest.raises(ConfigError, match="unknown objective 'swav'"):
        OBJECTIVES.section("swav")
    with pytest.raises(ConfigError, match="temperature=0: Input should be greater than 0"):
        OBJECTIVES.section("simclr", temperature=0)


def test_build_objective_resolves_the_detector_section() -> None:
    objective = build_objective(
        OBJECTIVES.section(
            "simclr_fnr", fn={"detector": "oracle", "removal_rate": 0.5, "mode": "attract"}
        )
    )
    assert objective == SimCLRFNRObjective(
        detector=OracleDetector(removal_rate=0.5), mode="attract"
    )
    with pytest.raises(ConfigError, match="fn.removal is not a parameter of detector 'oracle'"):
        OBJECTIVES.section("simclr_fnr", fn={"detector": "oracle", "removal": 0.5})
    with pytest.raises(ConfigError, match="fn is not a parameter of objective 'simclr'"):
        OBJECTIVES.section("simclr", fn={"detector": "oracle"})


def test_build_objective_rejects_a_foreign_section() -> None:
    from cslrobust.objectives import OracleSection

    with pytest.raises(ConfigError, match="not the section of a registered objective"):
        build_objective(OracleSection())  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_on_cuda_matches_cpu(name: str) -> None:
    """Same loss on CUDA (generator on the device, index and labels left on the CPU) as on CPU."""
    objective = build_objective(OBJECTIVES.section(name))
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(objective.n_views, 32, 16, generator=g, dtype=torch.float64)
    index = torch.randperm(1000, generator=g)[:32]
    labels = torch.randint(0, 4, (32,), generator=g)
    cpu = objective(outputs, index, labels)
    cuda_outputs = outputs.cuda().requires_grad_()
    gpu = objective(
        cuda_outputs, index, labels, generator=torch.Generator(device="cuda").manual_seed(0)
    )
    gpu.loss.backward()
    assert gpu.loss.device.type == "cuda"
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss)
    assert cuda_outputs.grad is not None and torch.isfinite(cuda_outputs.grad).all()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = objective(outputs.float().cuda(), index.cuda(), labels.cuda())
    assert torch.isfinite(half.loss)
