"""Fuzz: damaged run files, bad YAML, bad storage URLs and bad flags, through the real CLI.

Every case damages a private copy of a pristine trained run and a finished study (built once, see
``conftest.py``), runs one command in process and asserts the contract of every user error:
exit code 2, exactly one line on stderr (``error: ...``), no traceback, and every file that existed
before the command has the same bytes afterwards. The cases are generated from a fixed seed, so a
failure names a case that reproduces.

Only files the tool reads back are damaged: ``config.json``, the checkpoint's ``model.safetensors``
and ``state.pt``, ``probe.safetensors``, the study's YAML and its results database (``probe.json``,
``train.json``, ``latest.json`` and ``meta.json`` are written for people and never read back; the
trajectory stage's tagged records are a resume cache, recomputed when damaged: see its tests).
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from tests.fuzz.conftest import Pristine, copy_pristine
from typer.testing import CliRunner

from cslrobust.cli.main import app

SEED = 20261202
CHECKPOINT = "runs/run/checkpoints/epoch-0002"
MARKER = "pwned.txt"

Damage = Callable[[Pristine, random.Random], list[str]]
"""Damages the copy and returns the command (argv) that must then fail cleanly."""


@dataclass(frozen=True)
class Case:
    """One fuzz case: a damage (which also chooses the command) and the text the line must name."""

    id: str
    damage: Damage
    names: str | None = None  # a fragment the error line must contain (e.g. the damaged file)


# --- the commands that read each run file ---------------------------------------------------


def _probe(p: Pristine) -> list[str]:
    return ["probe", str(p.run_dir)]


def _attack(p: Pristine) -> list[str]:
    return ["attack", str(p.run_dir)]


def _resume(p: Pristine) -> list[str]:
    return ["train", str(p.config_yaml), "--resume"]


def _readers(name: str) -> list[Callable[[Pristine], list[str]]]:
    """The commands that read a run file (``train --resume`` continues from epoch 2 of 3)."""
    return {
        "config.json": [_probe, _attack, _resume],
        "model.safetensors": [_probe, _resume],
        "state.pt": [_resume],
        "probe.safetensors": [_attack],
    }[name]


def _path(p: Pristine, name: str) -> Path:
    return {
        "config.json": p.run_dir / "config.json",
        "model.safetensors": p.root / CHECKPOINT / "model.safetensors",
        "state.pt": p.root / CHECKPOINT / "state.pt",
        "probe.safetensors": p.run_dir / "probe.safetensors",
    }[name]


# --- byte-level damage (any file) ------------------------------------------------------------


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    # JSON files end in "}\n": cutting only the newline would leave a valid file.
    path.write_bytes(data[: rng.randrange(0, max(1, len(data) - 2))])


def _garbage(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    start = rng.randrange(0, max(1, min(len(data), 64)))
    for i in range(start, min(len(data), start + rng.randint(4, 32))):
        data[i] = rng.choice(b'\x00\xff\xfe\x80{["')
    path.write_bytes(bytes(data))


def _empty(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


BYTE_DAMAGE = {"truncate": _truncate, "garbage": _garbage, "empty": _empty}


# --- JSON damage ------------------------------------------------------------------------------


def _wrong_type(value: object, rng: random.Random) -> object:
    """A JSON value of a type no field of that kind accepts (never coercible to the original)."""
    if isinstance(value, dict):
        return rng.choice([7, "text", [1, 2]])
    if isinstance(value, list):
        return rng.choice([{"a": 1}, "text"])
    if isinstance(value, bool | int | float):
        return rng.choice([{"bad": [1]}, ["x"]])
    if isinstance(value, str):
        return rng.choice([{"bad": 1}, [1, 2]])
    return {"bad": True}


def _json_top_level(path: Path, rng: random.Random) -> None:
    path.write_text(json.dumps(rng.choice([[], [1, 2], 3, "text", None, True])))


def _json_field_type(path: Path, rng: random.Random, fields: tuple[str, ...]) -> None:
    data = json.loads(path.read_text())
    key = rng.choice([k for k in fields if k in data])
    data[key] = _wrong_type(data[key], rng)
    path.write_text(json.dumps(data))


def _json_unknown_key(path: Path, rng: random.Random) -> None:
    data = json.loads(path.read_text())
    section = rng.choice([k for k, v in data.items() if isinstance(v, dict)])
    data[section][f"nonsense_{rng.randrange(1000)}"] = 1
    path.write_text(json.dumps(data))


# The fields each reader needs: a wrong type or a missing value must be refused.
CONFIG_SECTIONS = ("data", "model", "train", "objective", "augment", "probe", "attack", "seed")


def _json_cases(rng: random.Random) -> list[Case]:
    cases = []
    damages: dict[str, Callable[[Path, random.Random], None]] = {
        **BYTE_DAMAGE,
        "top-level": _json_top_level,
        "field-type": lambda p, r: _json_field_type(p, r, CONFIG_SECTIONS),
        "unknown-key": _json_unknown_key,
    }
    for kind, damage in damages.items():
        for reader in _readers("config.json"):
            for i in range(3):
                cases.append(_file_case("config.json", kind, damage, reader, f"{i}"))
    rng.shuffle(cases)
    return cases


def _file_case(
    name: str,
    kind: str,
    damage: Callable[[Path, random.Random], None],
    reader: Callable[[Pristine], list[str]],
    suffix: str,
) -> Case:
    def run(p: Pristine, rng: random.Random) -> list[str]:
        damage(_path(p, name), rng)
        return reader(p)

    return Case(f"{name}-{kind}-{reader.__name__.strip('_')}-{suffix}", run, names=name)


# --- safetensors damage -----------------------------------------------------------------------


def _rewrite_safetensors(
    path: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, str]], None]
) -> None:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def _st_metadata(rng: random.Random) -> Callable[[Path, random.Random], None]:
    key, value = rng.choice(
        [
            ("feature_dim", "abc"),
            ("feature_dim", "-3"),
            ("n_views", "two"),
            ("epoch", "x1"),
            ("head_kind", "nonsense"),
        ]
    )

    def edit(path: Path, rng: random.Random) -> None:
        _rewrite_safetensors(path, lambda t, m: m.__setitem__(key, value))

    return edit


def _st_shape(path: Path, rng: random.Random) -> None:
    def edit(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        key = rng.choice(sorted(k for k, v in tensors.items() if v.dim() > 0))
        shape = list(tensors[key].shape)
        shape[0] += 1
        tensors[key] = torch.zeros(shape, dtype=tensors[key].dtype)

    _rewrite_safetensors(path, edit)


def _st_missing(path: Path, rng: random.Random) -> None:
    _rewrite_safetensors(path, lambda t, m: t.pop(rng.choice(sorted(t))))


def _st_extra(path: Path, rng: random.Random) -> None:
    _rewrite_safetensors(path, lambda t, m: t.__setitem__("nonsense.weight", torch.zeros(2)))


def _st_nonfinite(path: Path, rng: random.Random) -> None:
    def edit(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        key = rng.choice(sorted(k for k, v in tensors.items() if v.is_floating_point()))
        flat = tensors[key].clone().reshape(-1)
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf")])
        tensors[key] = flat.reshape(tensors[key].shape)

    _rewrite_safetensors(path, edit)


def _safetensors_cases(rng: random.Random) -> list[Case]:
    cases = []
    for name in ("model.safetensors", "probe.safetensors"):
        damages: dict[str, Callable[[Path, random.Random], None]] = {
            **BYTE_DAMAGE,
            "shape": _st_shape,
            "missing": _st_missing,
            "extra": _st_extra,
            "nonfinite": _st_nonfinite,
        }
        for i in range(3 if name == "model.safetensors" else 0):
            damages[f"metadata{i}"] = _st_metadata(rng)
        for kind, damage in damages.items():
            for reader in _readers(name):
                for i in range(2):
                    cases.append(_file_case(name, kind, damage, reader, f"{i}"))
    return cases


# --- state.pt damage --------------------------------------------------------------------------


class _Payload:
    """A pickle whose loading would run code (writes the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.marker, "code ran"))  # type: ignore[return-value]


def _state_edit(edit: Callable[[dict[str, object], random.Random], object]) -> Damage:
    def run(p: Pristine, rng: random.Random) -> list[str]:
        path = _path(p, "state.pt")
        state = torch.load(path, weights_only=True)
        result = edit(state, rng)
        torch.save(state if result is None else result, path)
        return _resume(p)

    return run


def _state_missing(state: dict[str, object], rng: random.Random) -> None:
    """Remove a field every version writes (``history``, ``objective``, ... came later: optional)."""
    where = rng.choice(["epoch", "optimizer", "optimizer.state", "optimizer.param_groups"])
    parent, _, key = where.rpartition(".")
    del (state[parent] if parent else state)[key]  # type: ignore[attr-defined]


def _state_field_type(state: dict[str, object], rng: random.Random) -> None:
    key = rng.choice(sorted(state))
    value = state[key]
    state[key] = (
        "abc" if isinstance(value, int | float | dict | list) else rng.choice([3, [1], "x"])
    )


def _state_tensor_shape(state: dict[str, object], rng: random.Random) -> None:
    buffers = state["optimizer"]["state"]  # type: ignore[index]
    slot = rng.choice(sorted(buffers))
    buffer = buffers[slot]["momentum_buffer"]
    buffers[slot]["momentum_buffer"] = torch.zeros(buffer.numel() + 1)


def _state_top_level(state: dict[str, object], rng: random.Random) -> object:
    return rng.choice([[1, 2], torch.zeros(3), "text", 7])


def _state_pickle(p: Pristine, rng: random.Random) -> list[str]:
    torch.save({"epoch": 2, "payload": _Payload(p.root / MARKER)}, _path(p, "state.pt"))
    return _resume(p)


def _state_cases(rng: random.Random) -> list[Case]:
    cases = [Case(f"state.pt-pickle-{i}", _state_pickle, names="unsafe") for i in range(2)]
    edits = {
        "missing": _state_missing,
        "field-type": _state_field_type,
        "tensor-shape": _state_tensor_shape,
        "top-level": _state_top_level,
    }
    for kind, edit in edits.items():
        for i in range(4):
            cases.append(Case(f"state.pt-{kind}-{i}", _state_edit(edit), names="state.pt"))
    # Bytes overwritten inside a zip archive may land in a part torch never reads (the local
    # headers): only damage that must be noticed is generated.
    for kind in ("truncate", "empty"):
        for i in range(2):
            cases.append(_file_case("state.pt", kind, BYTE_DAMAGE[kind], _resume, f"{i}"))
    return cases


# --- YAML -------------------------------------------------------------------------------------


def _yaml_edit(
    which: str, edit: Callable[[str, random.Random], str | bytes], command: str
) -> Damage:
    def run(p: Pristine, rng: random.Random) -> list[str]:
        path = p.study_yaml if which == "study" else p.config_yaml
        out = edit(path.read_text(), rng)
        path.write_bytes(out if isinstance(out, bytes) else out.encode())
        if which == "run":
            return ["train", str(path)]
        return ["study", *command.split(), str(path)]

    return run


def _non_utf8(text: str, rng: random.Random) -> bytes:
    data = text.encode()
    at = rng.randrange(len(data))
    return data[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80abc"]) + data[at:]


def _duplicate_line(text: str, rng: random.Random) -> str:
    """Repeat one ``key: value`` line (same indentation): a duplicate key in that mapping."""
    lines = text.splitlines()
    keyed = [i for i, line in enumerate(lines) if ":" in line and not line.strip().startswith("#")]
    i = rng.choice(keyed)
    return "\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]) + "\n"


def _duplicate_flow_key(text: str, rng: random.Random) -> str:
    """A duplicate key inside a flow mapping, e.g. ``{name: supervised, name: simclr}``."""
    lines = text.splitlines()

    def first_item(line: str) -> str:
        return line.split("{", 1)[1].split(",")[0].rstrip("}").strip()

    flows = [
        i
        for i, line in enumerate(lines)
        if "{" in line and ":" in first_item(line) and not set("[]{}") & set(first_item(line))
    ]
    i = rng.choice(flows)
    head, body = lines[i].split("{", 1)
    first = first_item(lines[i])
    lines[i] = f"{head}{{{first}, {body}"
    return "\n".join(lines) + "\n"


def _duplicate_seeds(text: str, rng: random.Random) -> str:
    seeds = rng.choice(["[0, 0]", "[1, 2, 1]", "[3, 3, 3]"])
    return text.replace("seeds: [0]", f"seeds: {seeds}")


def _syntax(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    broken = rng.choice(["{unclosed: [1, 2", "\tkey: tab-indented", "key: : value", "- [a, b"])
    return "\n".join([*lines[:i], broken, *lines[i:]]) + "\n"


def _top_level(text: str, rng: random.Random) -> str:
    return rng.choice(["- a\n- b\n", "just text\n", "42\n", "", "~\n"])


BAD_VALUES = {
    "study": [
        ("seeds: [0]", "seeds: []"),
        ("seeds: [0]", "seeds: [zero]"),
        ("stages: [train, probe, attack]", "stages: [train, nope]"),
        ("epochs: 1,", "epochs: -1,"),
        ("epochs: 1,", "epochs: many,"),
        ("eps_linf: [0, 2/255]", "eps_linf: [300]"),
        ("eps_linf: [0, 2/255]", "eps_linf: [two]"),
        ("name: supervised", "name: swav"),
        ("width: 8", "width: 0"),
        ("lr: 0.05", "lr: -1"),
        ("lr: 0.05", "lr: 0.05, nonsense: 1"),
        ("methods:\n", "methods: {}\nother:\n"),
        ("name: fuzz", "name: [a, b]"),
    ],
    "run": [
        ("epochs: 2,", "epochs: -2,"),
        ("width: 8", "width: eight"),
        ("name: supervised", "name: nope"),
        ("n_images: 8", "n_images: 0"),
        ("device: cpu", "device: not-a-device"),
        ("lr: 0.05", "lr: 0.05, bogus: 3"),
    ],
}


def _bad_value(which: str) -> Callable[[str, random.Random], str]:
    def edit(text: str, rng: random.Random) -> str:
        old, new = rng.choice([(o, n) for o, n in BAD_VALUES[which] if o in text])
        return text.replace(old, new, 1)

    return edit


def _yaml_cases(rng: random.Random) -> list[Case]:
    edits: dict[str, Callable[[str, random.Random], str | bytes]] = {
        "non-utf8": _non_utf8,
        "duplicate-key": _duplicate_line,
        "duplicate-flow-key": _duplicate_flow_key,
        "syntax": _syntax,
        "top-level": _top_level,
    }
    cases = []
    for which, commands in (("study", ("run", "status", "report")), ("run", ("train",))):
        for kind, edit in {**edits, "bad-value": _bad_value(which)}.items():
            for command in commands:
                for i in range(3):
                    name = "study.yaml" if which == "study" else "run.yaml"
                    cases.append(
                        Case(
                            f"{name}-{kind}-{command}-{i}",
                            _yaml_edit(which, edit, command),
                            names="duplicate" if kind.startswith("duplicate") else None,
                        )
                    )
    for command in ("run", "status"):
        for i in range(3):
            cases.append(
                Case(
                    f"study.yaml-duplicate-seeds-{command}-{i}",
                    _yaml_edit("study", _duplicate_seeds, command),
                    names="seed",
                )
            )
    return cases


# --- storage URLs and output locations --------------------------------------------------------


def _study_setting(key: str, value: Callable[[Pristine], str], command: str) -> Damage:
    def run(p: Pristine, rng: random.Random) -> list[str]:
        return ["study", command, str(p.study_yaml), "--set", f"{key}={value(p)}"]

    return run


LOCATIONS: dict[str, tuple[str, Callable[[Pristine], str]]] = {
    "postgres-url": ("storage", lambda p: "postgresql://user@localhost:1/nodb"),
    "unknown-scheme": ("storage", lambda p: "mysql://x/y"),
    "not-a-url": ("storage", lambda p: "results database"),
    "sqlite-under-file": ("storage", lambda p: f"sqlite:///{p.archive}/sub/results.db"),
    "sqlite-is-folder": ("storage", lambda p: f"sqlite:///{p.study_dir}"),
    "sqlite-not-a-database": ("storage", lambda p: f"sqlite:///{p.archive}"),
    "output-under-file": ("output_dir", lambda p: f"{p.archive}/out"),
    "output-is-file": ("output_dir", lambda p: str(p.archive)),
    "report-under-file": ("report_dir", lambda p: f"{p.archive}/report"),
}


def _damaged_database(p: Pristine, rng: random.Random) -> list[str]:
    db = p.study_dir / "out" / "results.db"
    _garbage(db, rng)
    return ["study", rng.choice(["status", "report", "run"]), str(p.study_yaml)]


def _location_cases(rng: random.Random) -> list[Case]:
    cases = []
    for kind, (key, value) in LOCATIONS.items():
        commands = ("run", "status", "report") if key != "report_dir" else ("run", "report")
        for command in commands:
            cases.append(Case(f"{kind}-{command}", _study_setting(key, value, command)))
    for i in range(3):
        cases.append(Case(f"results.db-garbage-{i}", _damaged_database, names="results.db"))
    for kind in ("output-is-file", "output-under-file"):
        value = LOCATIONS[kind][1]

        def train_into(p: Pristine, rng: random.Random, value: Callable = value) -> list[str]:
            return ["train", str(p.config_yaml), "--output-dir", value(p), "--name", "new"]

        cases.append(Case(f"train-{kind}", train_into))
    return cases


# --- flags ------------------------------------------------------------------------------------


def _flag_case(kind: str, argv: Callable[[Pristine], list[str]]) -> Case:
    return Case(f"flag-{kind}", lambda p, rng: argv(p))


def _flag_cases(rng: random.Random) -> list[Case]:
    run = lambda p: str(p.run_dir)  # noqa: E731
    cases = []
    for device in ("cuda", "cuda:3", "mps", "tpu", "cpu:x"):
        for command in ("probe", "attack"):
            cases.append(
                _flag_case(
                    f"device-{device}-{command}",
                    lambda p, c=command, d=device: [c, run(p), "--device", d],
                )
            )
        cases.append(
            _flag_case(
                f"device-{device}-study",
                lambda p, d=device: [
                    "study",
                    "run",
                    str(p.study_yaml),
                    "--set",
                    f"base.device={d}",
                ],
            )
        )
    for n in ("100000", "0", "-5", "many"):
        for command in ("attack", "analyze", "evaluate"):
            cases.append(
                _flag_case(
                    f"n-images-{n}-{command}",
                    lambda p, c=command, n=n: [c, run(p), "--n-images", n],
                )
            )
    for eps in ("abc", "300/255", "-1/255", "1/0", "2", ""):
        cases.append(
            _flag_case(f"eps-{eps or 'empty'}", lambda p, e=eps: ["attack", run(p), "--eps", e])
        )
    for setting in (
        "train.lr",
        "=3",
        "train..lr=3",
        "attack.steps=[",
        "nope.key=1",
        "attack.n_images=x",
    ):
        cases.append(
            _flag_case(f"set-{setting}", lambda p, s=setting: ["attack", run(p), "--set", s])
        )
    usage = {
        "unknown-option": lambda p: ["attack", run(p), "--nope", "1"],
        "missing-argument": lambda p: ["probe"],
        "unknown-command": lambda p: ["bogus"],
        "bad-int": lambda p: ["attack", run(p), "--steps", "abc"],
        "negative-steps": lambda p: ["attack", run(p), "--steps", "-1"],
        "no-such-epoch": lambda p: ["probe", run(p), "--epoch", "99"],
        "run-dir-missing": lambda p: ["probe", str(p.root / "nope")],
        "run-dir-is-file": lambda p: ["attack", str(p.archive)],
        "run-dir-empty": lambda p: ["probe", str(p.root)],
        "study-missing": lambda p: ["study", "status", str(p.root / "nope.yaml")],
        "study-is-folder": lambda p: ["study", "status", str(p.study_dir)],
        "config-missing": lambda p: ["train", str(p.root / "nope.yaml")],
        "data-source-missing": lambda p: [
            "train",
            str(p.config_yaml),
            "--name",
            "other",
            "--data-source",
            str(p.root / "nope.tar.gz"),
        ],
    }
    cases += [_flag_case(kind, argv) for kind, argv in usage.items()]
    return cases


def all_cases() -> list[Case]:
    """Every case, generated from :data:`SEED`."""
    rng = random.Random(SEED)
    cases = [
        *_json_cases(rng),
        *_safetensors_cases(rng),
        *_state_cases(rng),
        *_yaml_cases(rng),
        *_location_cases(rng),
        *_flag_cases(rng),
    ]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "fuzz case ids must be unique"
    return cases


CASES = all_cases()


def _snapshot(root: Path) -> dict[Path, str]:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _fixed_seed(case: Case) -> int:
    return struct.unpack("<I", hashlib.sha256(f"{SEED}:{case.id}".encode()).digest()[:4])[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(
    case: Case, pristine: Pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = copy_pristine(pristine, tmp_path / "copy")
    monkeypatch.chdir(copy.root)
    argv = case.damage(copy, random.Random(_fixed_seed(case)))
    before = _snapshot(copy.root)

    result = CliRunner().invoke(app, [*argv])

    detail = (
        f"{argv}\nstdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
    )
    assert result.exit_code == 2, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    assert "Traceback" not in result.output, detail
    assert "weights_only" not in result.output, detail
    if case.names is not None:
        assert case.names in lines[0], detail
    assert not (copy.root / MARKER).exists(), "a pickle payload ran"
    after = _snapshot(copy.root)
    changed = [
        str(p.relative_to(copy.root)) for p, digest in before.items() if after.get(p) != digest
    ]
    assert not changed, f"files changed or removed: {changed}\n{detail}"


def test_cases_cover_every_category_and_are_numerous() -> None:
    prefixes = {c.id.split("-")[0] for c in CASES}
    for expected in (
        "config.json",
        "model.safetensors",
        "state.pt",
        "probe.safetensors",
        "study.yaml",
        "flag",
    ):
        assert expected in prefixes
    assert len(CASES) >= 200
