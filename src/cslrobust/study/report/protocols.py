"""Adversarial pre-training: the evaluation protocols (SLF, ALF, AFF) and the gain of false-negative removal.

Reads the protocols stage's rows (``protocol/<p>/...``, :mod:`cslrobust.study.protocols`):

- per protocol, a table of clean accuracy, PGD and AutoAttack robust accuracy for every method with
  rows (mean over seeds with a 95 % interval: the hierarchical bootstrap over seeds and test images on
  the stored per-image bits, a t-interval across seeds without them);
- the gain of false-negative removal: each method paired with the method whose configs differ only by
  ``objective.fn`` (:func:`fn_pairs`), RA(with) - RA(without) per protocol and attack, paired by seed
  and test image (:func:`~cslrobust.statistics.paired_difference`);
- the published numbers of the full recipes (RobustSSL benchmark), labelled as not comparable;
- ``protocols.png``: robust vs clean accuracy, one dot per method and protocol.

Without protocol rows the section is one line saying so (when the study runs the stage) or omitted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cslrobust.statistics import Estimate, hierarchical_bootstrap, paired_difference, t_interval
from cslrobust.study.report.plots import new_figure, save_png
from cslrobust.study.report.results import Note, StudyResults, Table, eps_label, interval_caption
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section
from cslrobust.study.store import unpack_bits

PROTOCOLS = ("slf", "alf", "aff")
"""The protocols in report order."""

PROTOCOL_TITLES = {
    "slf": "SLF (standard linear finetuning)",
    "alf": "ALF (adversarial linear finetuning)",
    "aff": "AFF (adversarial full finetuning, TRADES)",
}

ATTACKS = ("pgd", "autoattack")
"""Attacks of the protocol rows, weakest first (the last one present is the headline)."""

ADVERSARIAL_OBJECTIVES = ("acl", "rocl", "dynacl")
"""Objective names of adversarial contrastive pre-training whose ``fn`` switches false-negative removal."""

IGNORED_KEYS = ("name", "output_dir", "device")
"""Config keys that never make two cells different methods (paths, the device)."""

#: Published numbers of the full recipes (RobustSSL benchmark, Xu et al.: ResNet-18, CIFAR-10, 1000
#: pre-training epochs, SLF, standard AutoAttack at 8/255): method -> (robust, clean) in %.
PUBLISHED_SLF = {
    "ACL (Jiang et al. 2020)": (39.17, 78.22),
    "AdvCL (Fan et al. 2021)": (43.18, 82.36),
    "DynACL (Luo et al. 2023)": (45.09, 75.41),
}

NO_ROWS = "Evaluation protocols: no cell has protocol results yet (stage `protocols`)."


def metric(protocol: str, name: str) -> str:
    """``protocol/<p>/<name>``."""
    return f"protocol/{protocol}/{name}"


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the ignored keys and without ``objective.fn``."""
    out = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    objective = dict(out.get("objective") or {})
    objective.pop("fn", None)
    out["objective"] = objective
    return out


def fn_pairs(
    configs: Mapping[Any, Mapping[str, Any]],
    objectives: Sequence[str] = ADVERSARIAL_OBJECTIVES,
) -> list[tuple[Any, Any]]:
    """Pairs ``(with, without)`` of configs that differ only by false-negative removal.

    ``without`` has an objective in ``objectives`` with ``fn`` null (or absent); ``with`` has the same
    objective with ``fn`` a detector section; everything else is equal except :data:`IGNORED_KEYS`
    (so cell configs pair only with the same ``seed``). Each ``with`` pairs with every matching
    ``without`` (normally one).

    Args:
        configs: Per key (a method, or a ``(method, seed)`` cell), its config as a mapping (JSON values).
        objectives: Objective names whose ``fn`` switches removal.

    Returns:
        The pairs, in the order of ``configs``.
    """
    with_fn: list[Any] = []
    without_fn: list[Any] = []
    for key, config in configs.items():
        objective = config.get("objective") or {}
        if objective.get("name") not in objectives:
            continue
        (with_fn if objective.get("fn") is not None else without_fn).append(key)
    return [
        (a, b)
        for a in with_fn
        for b in without_fn
        if _comparable(configs[a]) == _comparable(configs[b])
    ]


def method_pairs(
    configs: Mapping[tuple[str, int], Mapping[str, Any]],
) -> dict[tuple[str, str], list[int]]:
    """Method pairs ``(with, without)`` from cell configs, with the seeds both have (sorted)."""
    found: dict[tuple[str, str], set[int]] = {}
    for (m_with, seed), (m_without, _) in fn_pairs(configs):
        found.setdefault((m_with, m_without), set()).add(seed)
    return {pair: sorted(seeds) for pair, seeds in found.items()}


def _bits_by_seed(
    res: StudyResults, method: str, name: str, **cond: Any
) -> dict[int, np.ndarray] | None:
    """Per seed, the per-image bits of a protocol metric's rows; None when a row has none."""
    found = {}
    for r in res.matching(method, name, **cond):
        if not r.get("correct_bits"):
            return None
        found[int(r["seed"])] = unpack_bits(r["correct_bits"], int(r["n"]))
    return found


def estimate(res: StudyResults, method: str, name: str, **cond: Any) -> Estimate | None:
    """Accuracy over seeds and images (hierarchical bootstrap on the bits, else t across seeds)."""

    def compute() -> Estimate | None:
        bits = _bits_by_seed(res, method, name, **cond)
        if bits:
            return hierarchical_bootstrap(np.stack([bits[s] for s in sorted(bits)]))
        values = res.values(method, name, **cond)
        return t_interval(np.array(values)) if values else None

    return res.memo(("protocol", method, name, *sorted(cond.items())), compute)


def gain(
    res: StudyResults, with_fn: str, without_fn: str, seeds: Sequence[int], name: str, **cond: Any
) -> Estimate | None:
    """RA(with) - RA(without) over the seeds both have, paired by seed and image; None without rows."""
    a = _bits_by_seed(res, with_fn, name, **cond)
    b = _bits_by_seed(res, without_fn, name, **cond)
    if a is not None and b is not None:
        common = [s for s in seeds if s in a and s in b]
        if common and all(a[s].shape == b[s].shape for s in common):
            return paired_difference(
                np.stack([a[s] for s in common]), np.stack([b[s] for s in common])
            )
    va, vb = res.by_seed(with_fn, name, **cond), res.by_seed(without_fn, name, **cond)
    diffs = [va[s] - vb[s] for s in seeds if s in va and s in vb]
    return t_interval(np.array(diffs)) if diffs else None


def _budget(res: StudyResults, protocol: str, attack: str) -> float | None:
    """The eps of a protocol's rows of ``attack`` (the largest, if several)."""
    eps = {
        float(r["eps"])
        for r in res.rows
        if r["metric"] == metric(protocol, "robust_accuracy") and r["attack"] == attack
    }
    return max(eps) if eps else None


def _format(value: Estimate | None) -> str:
    return "n/a" if value is None else value.format()


def protocol_table(res: StudyResults, protocol: str) -> Table | None:
    """Clean, PGD and AutoAttack accuracy of every method under one protocol; None without rows."""
    methods = [m for m in res.methods if res.matching(m, metric(protocol, "clean_accuracy"))]
    if not methods:
        return None
    attacks = [(a, e) for a in ATTACKS if (e := _budget(res, protocol, a)) is not None]
    header = ["method", "seeds", "clean"] + [
        f"{a.upper() if a == 'pgd' else 'AutoAttack'} {eps_label('linf', e)}" for a, e in attacks
    ]
    header.append("selected epoch (val RA)")
    rows, used = [], []
    for method in methods:
        clean = estimate(res, method, metric(protocol, "clean_accuracy"))
        robust = [
            estimate(res, method, metric(protocol, "robust_accuracy"), attack=a, eps=e)
            for a, e in attacks
        ]
        used += [x.method for x in (clean, *robust) if x is not None]
        selected = ", ".join(
            f"{int(r['epoch'])} ({100 * float(r['value']):.1f})"
            for r in sorted(
                res.matching(method, metric(protocol, "val_robust_accuracy")),
                key=lambda r: r["seed"],
            )
        )
        seeds = sorted(
            {int(r["seed"]) for r in res.matching(method, metric(protocol, "clean_accuracy"))}
        )
        rows.append(
            [method, str(len(seeds)), _format(clean)]
            + [_format(x) for x in robust]
            + [selected or "-"]
        )
    return Table(
        f"{PROTOCOL_TITLES[protocol]}: clean and robust accuracy (%)",
        header,
        rows,
        "Mean over seeds on the fixed test subset, L-inf. PGD with the protocols' evaluation settings "
        "(random start); AutoAttack as configured (`protocols.autoattack`). Selected epoch: the epoch "
        "kept on validation robust accuracy, per seed (SLF: the probe's epoch, chosen on clean "
        "validation accuracy). " + interval_caption(used),
    )


def pair_gains(
    res: StudyResults, pairs: Mapping[tuple[str, str], list[int]]
) -> Iterator[tuple[str, str, list[int], str, str, float, Estimate]]:
    """``(with, without, seeds, protocol, attack, eps, gain)`` of every pair with protocol rows."""
    for (with_fn, without_fn), seeds in pairs.items():
        for protocol in PROTOCOLS:
            for attack in ATTACKS:
                eps = _budget(res, protocol, attack)
                if eps is None:
                    continue
                value = gain(
                    res,
                    with_fn,
                    without_fn,
                    seeds,
                    metric(protocol, "robust_accuracy"),
                    attack=attack,
                    eps=eps,
                )
                if value is not None:
                    yield with_fn, without_fn, seeds, protocol, attack, eps, value


def gain_table(res: StudyResults, ctx: ReportContext) -> Table | Note | None:
    """RA(with removal) - RA(without) per method pair, protocol and attack; None without pairs."""
    pairs = method_pairs(ctx.configs)
    if not pairs:
        return None
    header = ["with removal", "without", "seeds", "protocol", "attack", "RA(with) - RA(without)"]
    rows, used = [], []
    for with_fn, without_fn, seeds, protocol, attack, eps, value in pair_gains(res, pairs):
        used.append(value.method)
        rows.append(
            [
                with_fn,
                without_fn,
                ", ".join(map(str, seeds)),
                protocol.upper(),
                f"{'PGD' if attack == 'pgd' else 'AutoAttack'} {eps_label('linf', eps)}",
                _format(value),
            ]
        )
    if not rows:
        pairs_text = ", ".join(f"{a} / {b}" for a, b in pairs)
        return Note(
            [f"Gain of false-negative removal: the pairs {pairs_text} have no protocol rows yet."]
        )
    return Table(
        "Gain of false-negative removal: RA(with) - RA(without) (points)",
        header,
        rows,
        "Each method with false-negative removal (`objective.fn` set) against the method whose config "
        "differs only by `objective.fn`, over the seeds both have; paired by seed and test image. "
        + interval_caption(used).replace(
            "percentile bootstrap over seeds and test images (images shared by seeds)",
            "paired percentile bootstrap over seeds and test images (each seed's pair together)",
        ),
    )


def published_table() -> Table:
    """The published SLF numbers of the full recipes (RobustSSL benchmark)."""
    return Table(
        "Reference: published numbers (full recipes, not comparable to small budgets)",
        ["method", "SLF AutoAttack 8/255 (%)", "SLF clean (%)"],
        [[name, f"{ra:.2f}", f"{clean:.2f}"] for name, (ra, clean) in PUBLISHED_SLF.items()],
        "Published numbers of the full 1000-epoch pre-training recipes (RobustSSL benchmark, Xu et "
        "al.; ResNet-18, CIFAR-10, standard AutoAttack at 8/255, SLF). Not comparable to the small "
        "CPU budgets of this study: they show the scale a full run reaches.",
    )


def plot_protocols(res: StudyResults, path: Path) -> Path | None:
    """Robust (strongest attack present) vs clean accuracy: one dot per method and protocol."""
    markers = {"slf": "o", "alf": "s", "aff": "^"}
    points = []
    for protocol in PROTOCOLS:
        attack = next((a for a in reversed(ATTACKS) if _budget(res, protocol, a) is not None), None)
        if attack is None:
            continue
        eps = _budget(res, protocol, attack)
        for i, method in enumerate(res.methods):
            clean = res.values(method, metric(protocol, "clean_accuracy"))
            robust = res.values(method, metric(protocol, "robust_accuracy"), attack=attack, eps=eps)
            if clean and robust:
                points.append(
                    (protocol, attack, i, method, float(np.mean(clean)), float(np.mean(robust)))
                )
    if not points:
        return None
    fig, ax = new_figure((6.4, 4.6))
    labelled: set[str] = set()
    for protocol, _attack, i, method, x, y in points:
        ax.scatter(
            100 * x,
            100 * y,
            marker=markers[protocol],
            color=f"C{i % 10}",
            label=method if method not in labelled else None,
        )
        labelled.add(method)
        ax.annotate(
            protocol.upper(),
            (100 * x, 100 * y),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%) (AutoAttack if run, else PGD)")
    ax.set_title("Evaluation protocols: robust vs clean (o SLF, s ALF, ^ AFF)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


@register_section("protocols", order=28)
def protocols_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Tables per protocol, the gain of false-negative removal, the published reference, the plot."""
    has_rows = any(r["metric"].startswith("protocol/") for r in res.rows)
    if not has_rows:
        if "protocols" in ctx.stages:
            return SectionOutput(blocks=[Note([NO_ROWS])])
        return SectionOutput()
    out = SectionOutput(
        blocks=[
            Note(
                [
                    "SLF: the probe's linear head on the frozen encoder. ALF: a linear head trained "
                    "on PGD examples through the frozen encoder. AFF: backbone and a fresh head "
                    "finetuned with TRADES. ALF/AFF epochs chosen on validation robust accuracy."
                ],
                title="Adversarial pre-training: evaluation protocols",
            )
        ]
    )
    summary = []
    for protocol in PROTOCOLS:
        table = protocol_table(res, protocol)
        if table is not None:
            out.blocks.append(table)
            summary.append(table.text())
    gains = gain_table(res, ctx)
    if gains is not None:
        out.blocks.append(gains)
    out.blocks.append(published_table())
    path = plot_protocols(res, ctx.folder / "protocols.png")
    if path is not None:
        out.plots.append(("Evaluation protocols: robust vs clean accuracy", path))
    out.summary += summary
    return out
