"""MoCo v2: the queue, the key encoder's EMA, the loss against a naive computation, false-negative
detection over the queue, state and config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.models import build_encoder
from cslrobust.objectives import (
    OBJECTIVES,
    CandidateSet,
    ClusterDetector,
    FalseNegativeDetector,
    KeyQueue,
    MoCoMethod,
    MoCoObjective,
    OracleDetector,
    ThresholdDetector,
    TopKDetector,
    build_objective,
    family_of,
)
from cslrobust.objectives.method import cosine_momentum

B = 6  # images per batch
N_DATA = 40  # instance ids 0..39


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(
        "resnet18",
        width=4,
        head_kind="projector",
        num_classes=3,
        proj_hidden_dim=16,
        proj_dim=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def _runner(n_views: int):
    """The loop's runner in one process, fp32: (V*b, ...) -> (V, b, D)."""

    def run(module: nn.Module, views: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            out = module(views).float()
        return out.view(n_views, views.shape[0] // n_views, -1)

    return run


def _method(**params) -> MoCoMethod:
    objective = MoCoObjective(**params)
    method = objective.make_method(_encoder())
    assert isinstance(method, MoCoMethod)
    return method


def _batch(seed: int, n_views: int = 2, ids: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    views = torch.rand(n_views * B, 3, 8, 8, generator=g)
    index = ids if ids is not None else torch.randperm(N_DATA, generator=g)[:B]
    labels = index % 3
    return views, index, labels


def _loss(method: MoCoMethod, views, index, labels, *, epoch: int = 0, generator=None):
    run = _runner(method.n_views)
    return method.loss(
        run, method.network(), views, index, labels, generator=generator, epoch=epoch
    )


def _step(method: MoCoMethod, seed: int, step: int = 0, ids: torch.Tensor | None = None) -> None:
    """A loss (no optimiser step) and the after-step hook: fills the queue with that batch's keys."""
    views, index, labels = _batch(seed, method.n_views, ids)
    with torch.no_grad():
        _loss(method, views, index, labels)
    method.after_step(step, 100)


def _queries_and_keys(method: MoCoMethod, views: torch.Tensor):
    """Normalised query and key outputs (V, B, D) in float64, computed independently."""
    run = _runner(method.n_views)
    with torch.no_grad():
        q = F.normalize(run(method.encoder, views), dim=-1).double()
        k = F.normalize(run(method.key_encoder, views), dim=-1).double()
    return q, k


def _naive_loss(q, k, index, labels, queue: KeyQueue, tau, symmetric, detected=None, attract=False):
    """Per query, written out: -1/|P| sum_p log(e^{s_p} / sum_{P u N} e^{s_a})."""
    pairs = [(0, 1), (1, 0)] if symmetric else [(0, 1)]
    keys = queue.keys[: queue.filled].double()
    ids = queue.ids[: queue.filled].tolist()
    total, count = 0.0, 0
    for row_block, (qv, kv) in enumerate(pairs):
        for b in range(len(index)):
            row = row_block * len(index) + b
            s_pos = float(q[qv, b] @ k[kv, b]) / tau
            positives, denominator = [s_pos], [s_pos]
            for j, entry_id in enumerate(ids):
                if entry_id == int(index[b]):
                    continue  # the query's own instance: neither negative nor positive
                s = float(q[qv, b] @ keys[j]) / tau
                flagged = detected is not None and bool(detected[row, j])
                if flagged and not attract:
                    continue
                if flagged:
                    positives.append(s)
                denominator.append(s)
            log_z = math.log(sum(math.exp(s) for s in denominator))
            total += -sum(s - log_z for s in positives) / len(positives)
            count += 1
    return total / count


# -- the queue --------------------------------------------------------------------------------------


def test_queue_is_fifo_with_ids_and_labels_through_wrap_around():
    queue = KeyQueue(5, 2)
    assert queue.filled == 0 and queue.entries().z.shape == (0, 2)

    def push(ids: list[int]) -> None:
        t = torch.tensor(ids)
        queue.enqueue(torch.stack([t.float(), -t.float()], dim=1), t, t * 10)

    push([0, 1, 2])
    assert (queue.pointer, queue.filled) == (3, 3)
    assert queue.entries().sample_ids.tolist() == [0, 1, 2]
    push([3, 4, 5])  # wraps: 5 overwrites the oldest (0)
    assert (queue.pointer, queue.filled) == (1, 5)
    assert queue.ids.tolist() == [5, 1, 2, 3, 4]
    push([6, 7, 8, 9])  # overwrites 1..4, oldest first
    assert (queue.pointer, queue.filled) == (0, 5)
    assert queue.ids.tolist() == [5, 6, 7, 8, 9]
    assert queue.labels.tolist() == [50, 60, 70, 80, 90]
    torch.testing.assert_close(queue.keys[:, 0], queue.ids.float())
    torch.testing.assert_close(queue.keys[:, 1], -queue.ids.float())
    push(list(range(10, 17)))  # more than K: the last K keys, in order from the pointer
    assert queue.ids.tolist() == [12, 13, 14, 15, 16] and queue.pointer == 0
    push([17])
    assert queue.ids.tolist() == [17, 13, 14, 15, 16] and queue.pointer == 1


def test_queue_state_round_trips_and_refuses_another_size():
    queue = KeyQueue(4, 3)
    queue.enqueue(F.normalize(torch.randn(3, 3), dim=1), torch.arange(3), torch.arange(3) % 2)
    fresh = KeyQueue(4, 3)
    fresh.load_state_dict(queue.state_dict())
    assert (fresh.pointer, fresh.filled) == (3, 3)
    for name in ("keys", "ids", "labels"):
        assert torch.equal(getattr(fresh, name), getattr(queue, name))
    with pytest.raises(ValueError, match="queue_size"):
        KeyQueue(5, 3).load_state_dict(queue.state_dict())


# -- the key encoder --------------------------------------------------------------------------------


def test_key_encoder_follows_the_ema_formula_with_a_constant_momentum():
    method = _method(momentum=0.9, queue_size=8)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    for step in range(2):
        before = [p.clone() for p in method.key_encoder.parameters()]
        method.after_step(step, 10)
        for t, b, o in zip(
            method.key_encoder.parameters(), before, method.encoder.parameters(), strict=True
        ):
            torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert method.momentum == 0.9
    assert not any(p.requires_grad for p in method.key_encoder.parameters())


def test_key_encoder_momentum_follows_the_cosine_schedule():
    method = _method(momentum=0.9, momentum_schedule="cosine", queue_size=8)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.key_encoder.parameters()]
    method.after_step(5, 10)
    m = cosine_momentum(0.9, 5, 10)
    assert method.momentum == pytest.approx(1 - 0.1 * 0.5) == m
    for t, b, o in zip(
        method.key_encoder.parameters(), before, method.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


def test_no_gradient_reaches_the_key_encoder():
    method = _method(queue_size=64)
    _step(method, seed=1)
    views, index, labels = _batch(2)
    out = _loss(method, views, index, labels)
    out.loss.backward()
    assert all(p.grad is None for p in method.key_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    assert set(method.modules()) == {"encoder", "key_encoder"}
    assert method.network() is method.encoder


# -- the loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_with_an_empty_queue_is_zero(symmetric: bool):
    method = _method(queue_size=16, symmetric=symmetric)
    views, index, labels = _batch(0)
    out = _loss(method, views, index, labels)
    assert float(out.loss.detach()) == 0.0  # one logit: -log 1
    assert float(out.metrics["queue_fill"]) == 0.0
    q, k = _queries_and_keys(method, views)
    assert _naive_loss(q, k, index, labels, method.queue, 0.2, symmetric) == 0.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_equals_a_naive_infonce_over_a_partly_filled_queue(symmetric: bool):
    method = _method(queue_size=64, symmetric=symmetric, temperature=0.3)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    _step(method, seed=1, ids=ids)
    _step(method, seed=2, ids=ids + 6)
    per_step = 2 * B if symmetric else B
    assert method.queue.filled == 2 * per_step < 64
    # The batch shares instances 3, 4, 5 with the queue: those entries are not negatives.
    views, index, labels = _batch(3, ids=torch.tensor([3, 4, 5, 20, 21, 22]))
    out = _loss(method, views, index, labels)
    q, k = _queries_and_keys(method, views)
    expected = _naive_loss(q, k, index, labels, method.queue, 0.3, symmetric)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out.metrics["queue_fill"]) == pytest.approx(2 * per_step / 64)
    # fn_rate: the share of the (other-instance) queue entries with the query's label
    queue_ids, queue_labels = method.queue.entries().sample_ids, method.queue.entries().labels
    rows = index.repeat(2 if symmetric else 1)
    candidates = rows[:, None] != queue_ids[None, :]
    same = candidates & ((rows % 3)[:, None] == queue_labels[None, :])
    assert float(out.metrics["fn_rate"]) == pytest.approx(float(same.sum() / candidates.sum()))


def test_the_global_batch_keys_join_the_queue_after_the_step():
    method = _method(queue_size=64)
    views, index, labels = _batch(4)
    with torch.no_grad():
        _loss(method, views, index, labels)
        _, k = _queries_and_keys(method, views)
    assert method.queue.filled == 0  # not before the optimiser step
    method.after_step(0, 10)
    entries = method.queue.entries()
    assert entries.sample_ids.tolist() == index.repeat(2).tolist()
    assert entries.labels.tolist() == labels.repeat(2).tolist()
    torch.testing.assert_close(entries.z.double(), k.flatten(0, 1))  # view-major keys


# -- false negatives over the queue -----------------------------------------------------------------


def _fitted_cluster() -> ClusterDetector:
    detector = ClusterDetector(n_clusters=3, iters=5)
    bank = F.normalize(torch.randn(N_DATA, 8, generator=torch.Generator().manual_seed(7)), dim=1)
    detector.refresh(bank, generator=torch.Generator().manual_seed(8))
    return detector


DETECTORS = {
    "oracle": lambda: OracleDetector(),
    "threshold": lambda: ThresholdDetector(threshold=0.0),
    "topk": lambda: TopKDetector(k=3),
    "topk_support": lambda: TopKDetector(k=3, support_views=1),
    "cluster": _fitted_cluster,
}


def _expected_detection(
    detector: FalseNegativeDetector, q, support, rows_ids, rows_labels, queue: KeyQueue
) -> torch.Tensor:
    """The detector's decision per (query, queue entry), by a loop over anchors."""
    entries = queue.entries()
    m, n = rows_ids.shape[0], entries.sample_ids.shape[0]
    expected = torch.zeros(m, n, dtype=torch.bool)
    for i in range(m):
        candidates = [j for j in range(n) if int(entries.sample_ids[j]) != int(rows_ids[i])]
        anchor = q[i] if support is None else support[:, i % support.shape[1]].mean(0)
        scores = {j: float(anchor @ entries.z[j]) for j in candidates}
        if isinstance(detector, OracleDetector):
            picked = [j for j in candidates if int(entries.labels[j]) == int(rows_labels[i])]
        elif isinstance(detector, ThresholdDetector):
            picked = [j for j in candidates if scores[j] > detector.threshold]
        elif isinstance(detector, TopKDetector):
            picked = sorted(candidates, key=lambda j: -scores[j])[: detector.k]
        else:
            clusters = detector.pseudo_labels
            picked = [
                j for j in candidates if clusters[entries.sample_ids[j]] == clusters[rows_ids[i]]
            ]
        expected[i, picked] = True
    return expected


@pytest.mark.parametrize("mode", ["eliminate", "attract"])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_works_over_the_queue_in_both_modes(name: str, mode: str):
    detector = DETECTORS[name]()
    method = _method(
        queue_size=64, detector=detector, mode=mode, support_views=detector.support_views
    )
    ids = torch.arange(B)
    _step(method, seed=1, ids=ids)
    _step(method, seed=2, ids=ids + B)
    views, index, labels = _batch(3, method.n_views, ids=torch.tensor([2, 3, 20, 21, 22, 23]))
    out = _loss(method, views, index, labels, generator=torch.Generator().manual_seed(0))

    run = _runner(method.n_views)
    with torch.no_grad():
        outputs = F.normalize(run(method.encoder, views), dim=-1)
    q_rows = outputs[:2].flatten(0, 1)
    support = outputs[2:] if detector.support_views else None
    rows_ids, rows_labels = index.repeat(2), labels.repeat(2)
    detected = _expected_detection(detector, q_rows, support, rows_ids, rows_labels, method.queue)
    assert detected.any() and not detected.all()
    q, k = _queries_and_keys(method, views)
    expected = _naive_loss(
        q, k, index, labels, method.queue, 0.2, True, detected=detected, attract=mode == "attract"
    )
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)

    # precision and recall against the labels of the queue
    entries = method.queue.entries()
    candidates = rows_ids[:, None] != entries.sample_ids[None, :]
    true_fn = candidates & (rows_labels[:, None] == entries.labels[None, :])
    tp = float((detected & true_fn).sum())
    assert float(out.metrics["fn_precision"]) == pytest.approx(tp / float(detected.sum()))
    assert float(out.metrics["fn_recall"]) == pytest.approx(tp / float(true_fn.sum()))
    if name == "oracle":  # exactly the same-label queue entries
        assert torch.equal(detected, true_fn)
        assert float(out.metrics["fn_precision"]) == float(out.metrics["fn_recall"]) == 1.0


def test_oracle_partial_removal_over_the_queue_ties_the_views_of_an_instance():
    detector = OracleDetector(removal_rate=0.5)
    queue = CandidateSet(
        F.normalize(torch.randn(400, 4), dim=1), torch.arange(400) + 100, torch.arange(400) % 2
    )
    ids = torch.arange(8).repeat(2)  # two views of 8 instances
    labels = ids % 2
    candidates = torch.ones(16, 400, dtype=torch.bool)
    detected = detector(
        torch.zeros(16, 4),
        sample_ids=ids,
        labels=labels,
        candidate_mask=candidates,
        generator=torch.Generator().manual_seed(0),
        candidates=queue,
    )
    same_label = labels[:, None] == queue.labels[None, :]
    assert not (detected & ~same_label).any()
    assert torch.equal(detected[:8], detected[8:])  # both views decide alike
    assert 0.4 < float(detected.sum() / same_label.sum()) < 0.6


def test_detection_waits_for_the_warm_up():
    method = _method(queue_size=64, detector=OracleDetector(), warmup_epochs=1)
    _step(method, seed=1, ids=torch.arange(B))
    views, index, labels = _batch(3, ids=torch.arange(B) + 10)
    plain = _method(queue_size=64)
    _step(plain, seed=1, ids=torch.arange(B))
    early = _loss(method, views, index, labels, epoch=0)
    assert float(early.loss.detach()) == pytest.approx(
        float(_loss(plain, views, index, labels).loss.detach())
    )
    assert float(early.metrics["fn_removed_fraction"]) == 0.0
    late = _loss(method, views, index, labels, epoch=1)
    assert float(late.metrics["fn_removed_fraction"]) > 0.0


def test_cluster_detector_bank_goes_through_the_objective_and_the_state():
    objective = MoCoObjective(queue_size=8, detector=ClusterDetector(n_clusters=3))
    assert objective.needs_bank(0)
    bank = torch.randn(N_DATA, 8, generator=torch.Generator().manual_seed(0))
    objective.refresh(bank, epoch=0, generator=torch.Generator().manual_seed(1))
    method = objective.make_method(_encoder())
    state = method.state_dict()
    assert {"detector.pseudo_labels", "detector.centroids"} <= set(state)
    again = MoCoObjective(queue_size=8, detector=ClusterDetector(n_clusters=3))
    again.make_method(_encoder(1)).load_state_dict(state)
    assert torch.equal(again.detector.pseudo_labels, objective.detector.pseudo_labels)
    assert not MoCoObjective().needs_bank(0)


# -- state and config -------------------------------------------------------------------------------


def test_method_state_round_trips_and_refuses_other_states():
    method = _method(queue_size=16, momentum_schedule="cosine")
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(0.5)
    _step(method, seed=1, step=3)
    state = method.state_dict()
    fresh = MoCoObjective(queue_size=16, momentum_schedule="cosine").make_method(_encoder(5))
    fresh.load_state_dict(state)
    assert fresh.state_dict().keys() == state.keys()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert fresh.momentum == method.momentum and fresh.queue.pointer == method.queue.pointer
    with pytest.raises(KeyError, match="key_encoder"):
        fresh.load_state_dict({})
    with pytest.raises(ValueError, match="queue_size"):
        _method(queue_size=8).load_state_dict(state)


def test_section_defaults_and_family():
    section = OBJECTIVES.section("moco")
    assert (section.temperature, section.queue_size, section.momentum) == (0.2, 4096, 0.99)
    assert section.momentum_schedule == "constant" and section.symmetric and section.fn is None
    assert family_of(section) == "contrastive"
    objective = build_objective(section)
    assert isinstance(objective, MoCoObjective) and objective.detector is None
    assert objective.n_views == 2 and objective.head_kind == "projector"

    with_fn = OBJECTIVES.section(
        "moco", queue_size=65536, fn={"detector": "topk", "k": 5, "support_views": 2}
    )
    assert family_of(with_fn) == "fn_removal"
    built = build_objective(with_fn)
    assert built.detector == TopKDetector(k=5, support_views=2) and built.n_views == 4
    assert build_objective(OBJECTIVES.section("moco", fn={})).detector == OracleDetector()
    attract = build_objective(OBJECTIVES.section("moco", fn={"mode": "attract"}))
    assert attract.mode == "attract"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"queue_size": 0}, "queue_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum_schedule": "linear"}, "momentum_schedule"),
        ({"temperature": 0}, "temperature"),
        ({"fn": {"detector": "psychic"}}, "unknown detector"),
    ],
)
def test_bad_parameters_are_one_line_errors(params: dict[str, object], match: str):
    with pytest.raises(ConfigError, match=match):
        OBJECTIVES.section("moco", **params)


def test_support_views_must_match_the_detector():
    with pytest.raises(ConfigError, match="support_views"):
        MoCoObjective(detector=TopKDetector(k=2, support_views=1))
    with pytest.raises(ConfigError, match="support_views"):
        MoCoObjective(support_views=1)
