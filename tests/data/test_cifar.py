from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cslrobust.data import cifar
from cslrobust.data.cifar import (
    CIFAR_SPECS,
    cifar_spec,
    load_cifar,
    load_restricted_pickle,
    read_cifar_folder,
)
from cslrobust.errors import ConfigError, DataError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_CLASSES = tuple(f"class_{k:02d}" for k in range(100))


def _random_split(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return images, labels


def _records(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """The official record layout: label byte(s), then the R, G and B planes, row-major."""
    labels = np.stack(label_columns, axis=1).astype(np.uint8)  # (n, label_bytes)
    return np.concatenate([labels, images.reshape(len(images), -1)], axis=1).tobytes()


def _write_cifar10_binary(folder: Path) -> dict[str, np.ndarray]:
    """Five 3-record train batches and a 4-record test batch; returns the expected arrays."""
    folder.mkdir(parents=True)
    train_parts = []
    for i in range(1, 6):
        images, labels = _random_split(3, 10, seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(_records(images, labels))
        train_parts.append((images, labels))
    test_images, test_labels = _random_split(4, 10, seed=99)
    (folder / "test_batch.bin").write_bytes(_records(test_images, test_labels))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return {
        "train_images": np.concatenate([p[0] for p in train_parts]),
        "train_labels": np.concatenate([p[1] for p in train_parts]),
        "test_images": test_images,
        "test_labels": test_labels,
    }


def _assert_matches(raw: Any, expected: dict[str, np.ndarray]) -> None:
    for key, value in expected.items():
        tensor = getattr(raw, key)
        assert tensor.dtype == (torch.uint8 if "images" in key else torch.int64)
        np.testing.assert_array_equal(tensor.numpy(), value)


def _tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def test_official_specs() -> None:
    assert cifar_spec("cifar10").md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert cifar_spec("cifar100").md5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert cifar_spec("cifar10", "python").md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar_spec("cifar100", "python").md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert all(
        spec.url.startswith("https://www.cs.toronto.edu/~kriz/") for spec in CIFAR_SPECS.values()
    )
    with pytest.raises(ConfigError, match="cifar10/binary"):
        cifar_spec("svhn")


def test_read_cifar10_binary(tmp_path: Path) -> None:
    expected = _write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    raw = load_cifar("cifar10", tmp_path, download=False)
    _assert_matches(raw, expected)
    assert raw.classes == CIFAR10_CLASSES
    assert raw.name == "cifar10"


def test_read_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    expected = {}
    for split, seed in (("train", 1), ("test", 2)):
        images, fine = _random_split(5, 100, seed)
        coarse = (fine + 7) % 20
        (folder / f"{split}.bin").write_bytes(_records(images, coarse, fine))
        expected[f"{split}_images"], expected[f"{split}_labels"] = images, fine
    (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_CLASSES) + "\n")
    raw = load_cifar("cifar100", tmp_path, download=False)
    _assert_matches(raw, expected)
    assert raw.classes == CIFAR100_CLASSES


def test_load_cifar_extracts_verified_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _write_cifar10_binary(tmp_path / "src" / "cifar-10-batches-bin")
    root = tmp_path / "root"
    root.mkdir()
    archive = _tar_folder(
        tmp_path / "src" / "cifar-10-batches-bin", root / "cifar-10-binary.tar.gz"
    )
    fake = dataclasses.replace(
        CIFAR_SPECS[("cifar10", "binary")], md5=hashlib.md5(archive.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(cifar.CIFAR_SPECS, ("cifar10", "binary"), fake)  # type: ignore[index]
    raw = load_cifar("cifar10", root, download=False)
    _assert_matches(raw, expected)
    assert (root / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_load_cifar_rejects_archive_with_wrong_checksum(tmp_path: Path) -> None:
    _write_cifar10_binary(tmp_path / "src" / "cifar-10-batches-bin")
    archive = _tar_folder(
        tmp_path / "src" / "cifar-10-batches-bin", tmp_path / "cifar-10-binary.tar.gz"
    )
    with pytest.raises(DataError, match=f"checksum mismatch for {archive}: expected md5 c32a1d4a"):
        load_cifar("cifar10", tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-bin").exists()


def test_load_cifar_without_download_names_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "cifar-100-binary.tar.gz")):
        load_cifar("cifar100", tmp_path, download=False)


def test_binary_batch_with_bad_size(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10_binary(folder)
    bad = folder / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(
        DataError, match=rf"{bad} has 9218 bytes; expected a positive multiple of the 3073-byte"
    ):
        read_cifar_folder(folder, cifar_spec("cifar10"))


def test_binary_batch_with_out_of_range_label(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10_binary(folder)
    bad = folder / "test_batch.bin"
    data = bytearray(bad.read_bytes())
    data[0] = 10
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{bad} has labels in \[\d+, 10\]; expected \[0, 9\]"):
        read_cifar_folder(folder, cifar_spec("cifar10"))


def test_binary_class_names_with_wrong_count(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10_binary(folder)
    (folder / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="lists 2 classes; expected 10"):
        read_cifar_folder(folder, cifar_spec("cifar10"))


# --- python format --------------------------------------------------------------------------------


class _Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined, misc]
    """Writes every str/bytes as a Python 2 ``str`` (BINSTRING), like the official CIFAR pickles."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def _dump(obj: object, path: Path, style: str) -> None:
    if style == "py3":
        path.write_bytes(pickle.dumps(obj, protocol=4))
        return
    buffer = io.BytesIO()
    _Py2StylePickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    if style == "py2-numpy1":  # what numpy 1.x (and the official files) name the module
        data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def _write_cifar10_python(folder: Path, style: str) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    parts = []
    for i in range(1, 7):
        images, labels = _random_split(2, 10, seed=i)
        name = f"data_batch_{i}" if i < 6 else "test_batch"
        batch = {
            "batch_label": f"batch {i}",
            "labels": labels.tolist(),
            "data": images.reshape(2, -1),
            "filenames": [f"img_{i}_{k}.png" for k in range(2)],
        }
        _dump(batch, folder / name, style)
        parts.append((images, labels))
    _dump({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}, folder / "batches.meta", style)
    return {
        "train_images": np.concatenate([p[0] for p in parts[:5]]),
        "train_labels": np.concatenate([p[1] for p in parts[:5]]),
        "test_images": parts[5][0],
        "test_labels": parts[5][1],
    }


@pytest.mark.parametrize("style", ["py3", "py2-numpy1", "py2-numpy2"])
def test_read_cifar10_python(tmp_path: Path, style: str) -> None:
    expected = _write_cifar10_python(tmp_path / "cifar-10-batches-py", style)
    raw = load_cifar("cifar10", tmp_path, download=False, fmt="python")
    _assert_matches(raw, expected)
    assert raw.classes == CIFAR10_CLASSES


def test_read_cifar100_python(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    expected = {}
    for split, seed in (("train", 1), ("test", 2)):
        images, fine = _random_split(4, 100, seed)
        batch = {
            "data": images.reshape(4, -1),
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine % 20).tolist(),
        }
        _dump(batch, folder / split, "py2-numpy1")
        expected[f"{split}_images"], expected[f"{split}_labels"] = images, fine
    meta = {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": ["x"] * 20}
    _dump(meta, folder / "meta", "py2-numpy1")
    raw = load_cifar("cifar100", tmp_path, download=False, fmt="python")
    _assert_matches(raw, expected)


def _global_call_pickle(module: str, name: str, argument: str) -> bytes:
    """``module.name(argument)`` as protocol-2 opcodes, written by hand so nothing is executed."""
    arg = argument.encode()
    return (
        b"\x80\x02"
        + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        + b"X" + struct.pack("<I", len(arg)) + arg
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE
        + b"."
    )  # fmt: skip


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "getoutput"),
     ("numpy", "load"), ("numpy.core.multiarray", "scalar")],
)  # fmt: skip
def test_restricted_unpickler_refuses_other_globals(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(_global_call_pickle(module, name, f"touch {marker}"))
    with pytest.raises(DataError, match=f"refusing pickle {path}: it references {module}.{name}"):
        load_restricted_pickle(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_malicious_batch_in_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_python(folder, "py3")
    (folder / "data_batch_2").write_bytes(_global_call_pickle("os", "system", "true"))
    with pytest.raises(DataError, match="os.system"):
        load_cifar("cifar10", tmp_path, download=False, fmt="python")


def test_restricted_unpickler_reports_garbage(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataError, match=f"cannot unpickle {path}"):
        load_restricted_pickle(path)


def test_python_batch_with_wrong_data(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_python(folder, "py3")
    bad = folder / "data_batch_1"
    bad.write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=rf"{bad} key 'data' is a uint8 array of shape \(2, 10\)"):
        read_cifar_folder(folder, cifar_spec("cifar10", "python"))
