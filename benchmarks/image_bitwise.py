"""Are two image runs bitwise the same? (issue 16: "the image demo bitwise unchanged").

Compares two run folders made by ``cslrobust train`` (+ ``probe``, ``attack``) of the same config
from two checkouts: the run ids, every tensor of the latest checkpoint's ``model.safetensors`` and of
``probe.safetensors`` (exact equality of dtype, shape and bits; the max absolute difference is
printed per tensor), the weights' header metadata (the config's ``output_dir`` may differ), and every
number and string of ``train.json``, ``probe.json`` and ``attack.json`` except provenance and wall
clock (``created_at``, ``git_sha``, ``wall_seconds``, ``images_per_s``, ``epoch_seconds``, paths);
a field only one version writes is listed but is not a difference. Prints one line per compared item
and a verdict; exits 1 if anything differs::

    python benchmarks/image_bitwise.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

# Provenance, timing and location: allowed to differ between two checkouts and two folders.
VOLATILE = {
    "created_at", "git_sha", "wall_seconds", "images_per_s", "epoch_seconds", "checkpoint",
    "output_dir", "cslrobust", "python", "torch",
}  # fmt: skip


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _latest_weights(run: Path) -> Path:
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    return run / "checkpoints" / latest["path"] / "model.safetensors"


def compare_tensors(label: str, a: Path, b: Path) -> bool:
    """Print each tensor's max |a - b| and whether all are bitwise equal."""
    ta, meta_a = _tensors(a)
    tb, meta_b = _tensors(b)
    same = True
    if ta.keys() != tb.keys():
        print(f"  {label}: tensor names differ: {sorted(ta.keys() ^ tb.keys())}")
        return False
    for name in ta:
        x, y = ta[name], tb[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            print(f"  {label} {name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
            same = False
            continue
        # Bits, not values: -0.0 vs 0.0 or NaN payloads count as differences.
        equal = torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        print(f"  {label} {name:<48} max|diff| {diff:.3g}{'' if equal else '  DIFFERS'}")
        same &= equal
    for key in sorted(meta_a.keys() | meta_b.keys()):
        va, vb = meta_a.get(key), meta_b.get(key)
        if key == "config" and va and vb:  # the config as JSON: keys a version adds are listed
            same &= compare_leaves(f"{label} header config", json.loads(va), json.loads(vb))
        elif va != vb:
            print(f"  {label} header {key!r}: {va!r} vs {vb!r}")
            same = False
    print(f"  {label}: {len(ta)} tensors, header metadata {sorted(meta_a)}: "
          f"{'bitwise equal' if same else 'DIFFERENT'}")  # fmt: skip
    return same


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def compare_json(label: str, a: Path, b: Path) -> bool:
    """Every non-volatile leaf of two JSON files must be equal (floats exactly)."""
    return compare_leaves(label, json.loads(a.read_text()), json.loads(b.read_text()))


def compare_leaves(label: str, a: Any, b: Any) -> bool:
    """Every non-volatile leaf present in both ``a`` and ``b`` must be equal (floats exactly)."""
    la, lb = _leaves(_strip(a)), _leaves(_strip(b))
    shared = sorted(la.keys() & lb.keys())
    differing = [k for k in shared if la[k] != lb[k]]
    for key in differing[:10]:
        print(f"  {label} {key}: {la[key]!r} vs {lb[key]!r}")
    for side, only in (("A", la.keys() - lb.keys()), ("B", lb.keys() - la.keys())):
        if only:  # a field one version adds is not a changed number; listed, not a failure
            print(f"  {label}: only in {side}: {', '.join(sorted(only))}")
    numbers = sum(isinstance(la[k], (int, float)) for k in shared)
    print(f"  {label}: {len(shared)} shared values ({numbers} numbers): "
          f"{'equal' if not differing else f'{len(differing)} DIFFER'}")  # fmt: skip
    return not differing


def compare_runs(a: Path, b: Path) -> bool:
    """All comparisons of two run folders; prints them."""
    print(f"{a}  vs  {b}")
    id_a = json.loads((a / "train.json").read_text())["run_id"]
    id_b = json.loads((b / "train.json").read_text())["run_id"]
    same = id_a == id_b
    print(f"  run id: {id_a} vs {id_b}: {'equal' if same else 'DIFFERENT'}")
    same &= compare_tensors("model", _latest_weights(a), _latest_weights(b))
    if (a / "probe.safetensors").is_file() or (b / "probe.safetensors").is_file():
        same &= compare_tensors("probe", a / "probe.safetensors", b / "probe.safetensors")
    for name in ("train.json", "probe.json", "attack.json"):
        if (a / name).is_file() or (b / name).is_file():
            same &= compare_json(name, a / name, b / name)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pairs of run folders: A B [A2 B2 ...]")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("expected pairs of run folders")
    pairs = list(zip(args.runs[::2], args.runs[1::2], strict=True))
    same = all([compare_runs(a, b) for a, b in pairs])
    print(f"verdict: {'BITWISE IDENTICAL' if same else 'DIFFERENT'} ({len(pairs)} run pair(s))")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
