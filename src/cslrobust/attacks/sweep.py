"""Eps sweeps, clean-accuracy-free robustness measures, FAB minimal perturbations, and plots.

Clean accuracy confounds robust accuracy: a model that is wrong on more clean images has fewer to
lose. The measures here condition on the initially correct samples instead:

- attack success rate: fraction of initially correct samples the attack flips;
- robust/clean ratio: robust accuracy divided by clean accuracy (1 - success rate);
- eps50: the eps at which half of the initially correct samples are flipped, by linear
  interpolation of the success-rate curve, with the point (0, 0) prepended (an attack at eps = 0
  flips nothing). The first crossing of 0.5 counts. ``math.inf`` if the curve never reaches 0.5 (the
  sweep was too short), NaN if no sample was initially correct;
- the per-sample minimal adversarial perturbation found by FAB (Croce and Hein, ICML 2020,
  ``pyautoattack``'s reference implementation, untargeted, minimum-norm mode), summarised by its
  median and quantiles over the initially correct samples. Its median is the direct estimate of
  eps50; the sweep's eps50 is a second, coarser estimate from a fixed-budget attack.

Default sweeps are for non-adversarially trained models, which collapse by 8/255 L-inf, so they start
at 0.25/255.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from cslrobust.attacks.autoattack import (
    AutoAttackBudget,
    AutoAttackResult,
    AutoAttackVersion,
    run_autoattack,
)
from cslrobust.attacks.evaluate import AttackResult, robust_accuracy
from cslrobust.attacks.gates import AccuracyPoint
from cslrobust.attacks.target import AttackTarget, frozen_eval
from cslrobust.attacks.threat_model import Norm, perturbation_norm, validate_norm
from cslrobust.distributed import sharded_batches
from cslrobust.seeding import derive_seed, rng_scope

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Default L-inf radii in units of 1/255 (as ``AttackConfig.eps_linf``): 0.25/255 ... 8/255.
DEFAULT_LINF_EPS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Default L2 radii in [0,1] pixel space.
DEFAULT_L2_EPS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
#: Quantiles reported for the minimal perturbation.
DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)

PathLike = str | os.PathLike[str]


def default_eps(norm: Norm) -> tuple[float, ...]:
    """The default sweep for ``norm`` as fractions of the [0,1] range (L-inf divided by 255)."""
    norm = validate_norm(norm)
    if norm == "linf":
        return tuple(e / 255 for e in DEFAULT_LINF_EPS)
    return DEFAULT_L2_EPS


@dataclass(frozen=True)
class SweepRow:
    """One point of a sweep: an attack at one (norm, eps).

    Attributes:
        attack: Attack name (``"fgsm"``, ``"pgd"``, ``"autoattack"``).
        norm: ``"linf"`` or ``"l2"``.
        eps: Radius, a fraction of the [0,1] range.
        clean_accuracy: Accuracy on the clean inputs.
        robust_accuracy: Accuracy under the attack.
        attack_success_rate: Fraction of initially correct samples flipped (NaN if none correct).
        robust_clean_ratio: ``robust_accuracy / clean_accuracy`` (NaN if clean accuracy is 0).
        max_perturbation: Largest perturbation norm observed.
        n: Number of samples.
        result: The per-sample outcome.
    """

    attack: str
    norm: Norm
    eps: float
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    robust_clean_ratio: float
    max_perturbation: float
    n: int
    result: AttackResult = field(repr=False, compare=False)

    def metrics(self) -> dict[str, float]:
        """The scalar fields, for long-format result rows."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "robust_clean_ratio": self.robust_clean_ratio,
            "max_perturbation": self.max_perturbation,
            "n": float(self.n),
        }


def sweep_rows(
    attack: str, norm: Norm, results: Sequence[tuple[float, AttackResult]]
) -> list[SweepRow]:
    """Rows sorted by eps from ``(eps, result)`` pairs of one attack on one set of samples.

    Raises:
        ValueError: If the results disagree on per-sample clean correctness (different images or a
            non-deterministic model): the clean-accuracy-free measures need one shared set.
    """
    norm = validate_norm(norm)
    ordered = sorted(results, key=lambda item: item[0])
    if ordered:
        reference = ordered[0][1].clean_correct
        for eps, result in ordered[1:]:
            if not torch.equal(result.clean_correct, reference):
                raise ValueError(
                    f"{attack} at eps={eps:.6g} has different clean-correct samples than at "
                    f"eps={ordered[0][0]:.6g}; a sweep must share one set of samples"
                )
    return [
        SweepRow(
            attack=attack,
            norm=norm,
            eps=eps,
            clean_accuracy=r.clean_accuracy,
            robust_accuracy=r.robust_accuracy,
            attack_success_rate=r.attack_success_rate,
            robust_clean_ratio=(
                r.robust_accuracy / r.clean_accuracy if r.clean_accuracy > 0 else math.nan
            ),
            max_perturbation=r.max_perturbation,
            n=r.n,
            result=r,
        )
        for eps, r in ordered
    ]


def sweep(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attack: str,
    norm: Norm,
    eps_list: Sequence[float] | None = None,
    seed: int,
    steps: int = 10,
    relative_step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[SweepRow]:
    """Run a registered attack (FGSM, PGD) at every eps through :func:`robust_accuracy`.

    Every eps attacks the same samples with the same per-batch random streams, so the curve has no
    sampling noise between its points.

    Args:
        target: An :class:`AttackTarget` or a plain model (frozen for the call, then restored).
        images: Inputs in [0,1].
        labels: Integer labels.
        attack: Registered attack name.
        norm: ``"linf"`` or ``"l2"``.
        eps_list: Radii as fractions of the [0,1] range; ``None``: :func:`default_eps`.
        seed: Run seed (per-batch attack streams derive from it).
        steps: PGD steps.
        relative_step_size: Step size as a multiple of eps; ``None``: ``2.5 / steps`` (Madry).
        random_start: PGD random start.
        restarts: PGD restarts.
        batch_size: Samples per batch.
        device: Where batches are attacked.
        progress: Show progress bars.

    Returns:
        One :class:`SweepRow` per eps, sorted by eps.
    """
    norm = validate_norm(norm)
    radii = tuple(eps_list) if eps_list is not None else default_eps(norm)
    results = [
        (
            eps,
            robust_accuracy(
                target,
                images,
                labels,
                attack=attack,
                eps=eps,
                norm=norm,
                steps=steps,
                step_size=relative_step_size * eps if relative_step_size is not None else None,
                random_start=random_start,
                restarts=restarts,
                seed=seed,
                batch_size=batch_size,
                device=device,
                progress=progress,
            ),
        )
        for eps in radii
    ]
    return sweep_rows(attack, norm, results)


def autoattack_sweep(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    norm: Norm,
    eps_list: Sequence[float] | None = None,
    seed: int,
    version: AutoAttackVersion = "standard",
    attacks: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    state_dir: PathLike | None = None,
    budget: AutoAttackBudget | None = None,
    verbose: bool = False,
) -> tuple[list[SweepRow], list[AutoAttackResult]]:
    """:func:`~cslrobust.attacks.autoattack.run_autoattack` at every eps.

    Each eps keeps its resumable state in ``state_dir / f"{norm}-eps{eps:.6g}"``. Rows are named
    ``"autoattack"``; the full results (per-attack accuracies, ``x_adv``, flags) come back too.
    """
    norm = validate_norm(norm)
    radii = tuple(eps_list) if eps_list is not None else default_eps(norm)
    full: list[AutoAttackResult] = []
    for eps in radii:
        full.append(
            run_autoattack(
                target,
                images,
                labels,
                eps=eps,
                norm=norm,
                version=version,
                attacks=attacks,
                seed=seed,
                batch_size=batch_size,
                device=device,
                state_dir=Path(state_dir) / f"{norm}-eps{eps:.6g}" if state_dir else None,
                budget=budget,
                verbose=verbose,
            )
        )
    rows = sweep_rows("autoattack", norm, [(r.eps, r.as_attack_result()) for r in full])
    return rows, sorted(full, key=lambda r: r.eps)


def eps50(eps: Sequence[float], success_rate: Sequence[float]) -> float:
    """The eps at which the attack success rate first reaches 0.5, by linear interpolation.

    The point ``(0, 0)`` is prepended unless ``eps`` already contains 0; points are sorted by eps.

    Returns:
        The interpolated eps; ``math.inf`` if the success rate never reaches 0.5; NaN if any
        success rate is NaN (no initially correct sample).

    Raises:
        ValueError: On mismatched lengths or negative eps.
    """
    if len(eps) != len(success_rate):
        raise ValueError(
            f"eps and success_rate differ in length: {len(eps)} vs {len(success_rate)}"
        )
    if any(e < 0 for e in eps):
        raise ValueError(f"eps must be >= 0, got {list(eps)}")
    if any(math.isnan(s) for s in success_rate):
        return math.nan
    points = sorted(zip(eps, success_rate, strict=True))
    if not points or points[0][0] > 0:
        points.insert(0, (0.0, 0.0))
    if points[0][1] >= 0.5:
        return points[0][0]
    for (e0, s0), (e1, s1) in zip(points, points[1:], strict=False):
        if s1 >= 0.5:  # first crossing: s0 < 0.5 <= s1, so s1 > s0
            return e0 + (0.5 - s0) * (e1 - e0) / (s1 - s0)
    return math.inf


@dataclass(frozen=True)
class SweepSummary:
    """Clean-accuracy-free summary of one sweep (one attack, one norm).

    Attributes:
        attack: Attack name.
        norm: ``"linf"`` or ``"l2"``.
        eps50: See :func:`eps50`.
        clean_accuracy: Shared clean accuracy of the sweep.
        n_correct: Number of initially correct samples (the denominator of the success rates).
    """

    attack: str
    norm: Norm
    eps50: float
    clean_accuracy: float
    n_correct: int


def summarize_sweep(rows: Sequence[SweepRow]) -> SweepSummary:
    """eps50 and the shared clean numbers of one sweep's rows.

    Raises:
        ValueError: If ``rows`` is empty or mixes attacks or norms.
    """
    if not rows:
        raise ValueError("summarize_sweep needs at least one row")
    kinds = {(r.attack, r.norm) for r in rows}
    if len(kinds) != 1:
        raise ValueError(f"rows mix attacks/norms: {sorted(kinds)}")
    first = rows[0]
    return SweepSummary(
        attack=first.attack,
        norm=first.norm,
        eps50=eps50([r.eps for r in rows], [r.attack_success_rate for r in rows]),
        clean_accuracy=first.clean_accuracy,
        n_correct=int(first.result.clean_correct.sum()),
    )


def quantile_with_inf(values: Tensor, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that handles ``inf`` entries.

    Interpolating between a finite value and ``inf`` gives ``inf`` unless the weight on ``inf`` is 0.
    Returns NaN for an empty input.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    data = np.sort(values.detach().cpu().double().numpy())
    if data.size == 0:
        return math.nan
    position = q * (data.size - 1)
    low = int(math.floor(position))
    high = min(low + 1, data.size - 1)
    weight = position - low
    if weight == 0.0 or data[low] == data[high]:
        return float(data[low])
    if math.isinf(data[high]):
        return math.inf
    return float(data[low] + weight * (data[high] - data[low]))


@dataclass(frozen=True)
class MinNormResult:
    """Per-sample minimal adversarial perturbations found by FAB.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        norms: ``(N,)`` float64 on CPU: the smallest perturbation norm found for each sample;
            0 for initially misclassified samples; ``inf`` where FAB found no adversarial example.
        clean_correct: ``(N,)`` bool on CPU.
        median: Median of ``norms`` over initially correct samples (``inf`` if FAB failed on
            at least half of them; NaN if none correct).
        quantiles: Quantile -> value over initially correct samples.
        success_rate: Fraction of initially correct samples for which FAB found an example.
        n: Number of samples.
    """

    norm: Norm
    norms: Tensor
    clean_correct: Tensor
    median: float
    quantiles: dict[float, float]
    success_rate: float
    n: int

    def metrics(self) -> dict[str, float]:
        """Scalars for long-format rows: median, success rate and ``min_norm_q<q>`` quantiles."""
        out = {"min_norm_median": self.median, "fab_success_rate": self.success_rate}
        for q, value in self.quantiles.items():
            out[f"min_norm_q{q:g}"] = value
        return out


def minimal_perturbation(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    norm: Norm,
    n_iter: int = 100,
    n_restarts: int = 1,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> MinNormResult:
    """Smallest adversarial perturbation per sample, by FAB (untargeted, minimum-norm mode).

    Calls ``FABAttack_PT.attack_single_run`` of the reference implementation on each batch: the
    first run starts at the input, further restarts from random points (FAB's own restart radius),
    and each sample keeps its smallest perturbation over runs. A sample counts as flipped only if the
    target, re-evaluated here, misclassifies the returned point. FAB reseeds nothing itself in this
    mode; the random restarts draw from the global RNG, seeded per batch with
    ``derive_seed(seed, "fab", batch)`` inside :func:`rng_scope`, so the caller's RNG is restored.
    With several processes the batches are sharded across ranks and the results gathered.

    Args:
        target: An :class:`AttackTarget` or a plain model (frozen for the call, then restored).
        images: Inputs in [0,1], float32.
        labels: Integer labels.
        norm: ``"linf"`` or ``"l2"``.
        n_iter: FAB iterations per run (100 in AutoAttack).
        n_restarts: Runs per batch (1: no random restart).
        seed: Run seed (restart draws derive from it).
        batch_size: Samples per batch.
        device: Where batches are attacked.
        quantiles: Quantiles to report.

    Returns:
        A :class:`MinNormResult`.

    Shape:
        images: ``(N, C, H, W)``; labels: ``(N,)``.
    """
    from pyautoattack.fab_pt import FABAttack_PT

    norm = validate_norm(norm)
    if n_iter < 1 or n_restarts < 1:
        raise ValueError(f"need n_iter >= 1 and n_restarts >= 1, got {n_iter}, {n_restarts}")
    if images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise ValueError(f"bad shapes {tuple(images.shape)} and {tuple(labels.shape)}")
    device = torch.device(device)
    fab_norm = {"linf": "Linf", "l2": "L2"}[norm]
    with contextlib.nullcontext() if isinstance(target, AttackTarget) else frozen_eval(target):
        frozen = target if isinstance(target, AttackTarget) else AttackTarget(target)
        fab = FABAttack_PT(
            frozen,
            norm=fab_norm,
            n_restarts=n_restarts,
            n_iter=n_iter,
            seed=derive_seed(seed, "fab"),
            device=device,
        )

        def smallest(batch_index: int, rows: slice) -> Tensor:
            """(B, 2) float64: smallest fooling norm found, clean correct."""
            x = images[rows].to(device)
            y = labels[rows].to(device)
            with torch.no_grad():
                clean_ok = frozen(x).argmax(dim=1) == y
            best = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=device)
            best[~clean_ok] = 0.0
            # FAB's random restarts draw from the global RNG: seed it per batch, then restore it.
            with rng_scope(derive_seed(seed, "fab", batch_index), device):
                for run in range(n_restarts):
                    adv = fab.attack_single_run(x, y, use_rand_start=run > 0, is_targeted=False)
                    with torch.no_grad():
                        fooled = clean_ok & (frozen(adv).argmax(dim=1) != y)
                    found = perturbation_norm(adv.double() - x.double(), norm)
                    best = torch.where(fooled & (found < best), found, best)
            return torch.stack([best, clean_ok.double()], dim=1)

        table = sharded_batches(images.shape[0], batch_size, smallest).cpu()  # (N, 2)
    norms = table[:, 0].contiguous()
    clean_correct = table[:, 1].bool()
    correct_norms = norms[clean_correct]
    n_correct = correct_norms.numel()
    return MinNormResult(
        norm=norm,
        norms=norms,
        clean_correct=clean_correct,
        median=quantile_with_inf(correct_norms, 0.5),
        quantiles={q: quantile_with_inf(correct_norms, q) for q in quantiles},
        success_rate=(
            int(torch.isfinite(correct_norms).sum()) / n_correct if n_correct else math.nan
        ),
        n=norms.numel(),
    )


def _eps_axis(norm: Norm, eps: Sequence[float]) -> tuple[list[float], str]:
    """x-axis values and label: L-inf in units of 1/255, L2 as is."""
    if norm == "linf":
        return [e * 255 for e in eps], "eps (L-inf, x/255)"
    return list(eps), "eps (L2)"


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    return fig


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v")


def _curves(rows: Sequence[AccuracyPoint], norm: Norm) -> dict[str, list[tuple[float, float]]]:
    """Attack -> sorted (eps, robust accuracy) points with eps > 0 (the axis is logarithmic)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.norm == norm and row.eps > 0:
            curves.setdefault(row.attack, []).append((row.eps, row.robust_accuracy))
    return {attack: sorted(points) for attack, points in sorted(curves.items())}


def plot_sweep(
    rows_by_model: Mapping[str, Sequence[AccuracyPoint]], path: PathLike, norm: Norm
) -> list[Path]:
    """Robust accuracy vs eps: one PNG per model and one overlay of all models.

    Rows are :class:`SweepRow` objects or any rows with ``attack``, ``norm``, ``eps``,
    ``clean_accuracy``, ``robust_accuracy`` and ``n`` (e.g. rebuilt from stored results).

    The overlay goes to ``path`` (one colour per model, one line style per attack); model ``m``'s
    figure to ``<stem>-<m><suffix>`` next to it (the name made filesystem-safe), one colour per
    attack and the clean accuracy as a dashed line. eps > 0 is drawn on a log axis, L-inf in units
    of 1/255. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).

    Returns:
        The written paths, the overlay first.

    Raises:
        ValueError: If no row has ``norm`` and eps > 0.
    """
    norm = validate_norm(norm)
    out = Path(path)
    curves_by_model = {model: _curves(rows, norm) for model, rows in rows_by_model.items()}
    attacks = sorted({a for curves in curves_by_model.values() for a in curves})
    if not attacks:
        raise ValueError(f"no sweep rows with norm {norm!r} and eps > 0 to plot")
    style = {a: (_LINESTYLES[i % 4], _MARKERS[i % 5]) for i, a in enumerate(attacks)}
    all_eps = sorted({e for c in curves_by_model.values() for pts in c.values() for e, _ in pts})
    ticks, xlabel = _eps_axis(norm, all_eps)
    title_norm = "L-inf" if norm == "linf" else "L2"
    written: list[Path] = []

    def finish(fig: Figure, ax: Any, title: str, target: Path) -> None:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(target, dpi=120, format="png")
        written.append(target)

    fig = _new_figure()
    ax = fig.add_subplot()
    for index, (model, curves) in enumerate(curves_by_model.items()):
        for attack, points in curves.items():
            xs, _ = _eps_axis(norm, [e for e, _ in points])
            linestyle, marker = style[attack]
            ax.plot(
                xs,
                [100 * a for _, a in points],
                color=f"C{index % 10}",
                linestyle=linestyle,
                marker=marker,
                label=f"{model}: {attack}",
            )
    finish(fig, ax, f"Robust accuracy vs {title_norm} eps", out)
    for model, curves in curves_by_model.items():
        if not curves:
            continue
        fig = _new_figure()
        ax = fig.add_subplot()
        for attack, points in curves.items():
            xs, _ = _eps_axis(norm, [e for e, _ in points])
            ax.plot(xs, [100 * a for _, a in points], marker=style[attack][1], label=attack)
        clean = next(r.clean_accuracy for r in rows_by_model[model] if r.norm == norm)
        ax.axhline(100 * clean, color="grey", ls="--", lw=1, label="clean")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        finish(
            fig,
            ax,
            f"{model}: robust accuracy vs {title_norm} eps",
            out.with_name(f"{out.stem}-{safe}{out.suffix}"),
        )
    return written
