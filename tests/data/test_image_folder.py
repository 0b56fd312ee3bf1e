from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cslrobust.data import image_folder
from cslrobust.data.image_folder import load_image_folder
from cslrobust.data.raw import RawDataset
from cslrobust.errors import DataError


def _load(source: Path, cache: Path) -> RawDataset:
    return load_image_folder(source, cache, progress=False)


def _expected(root: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """Oracle: read the PNGs back in (class, file) order, channels first."""
    classes = sorted(p.name for p in (root / split).iterdir())
    images, labels = [], []
    for label, class_name in enumerate(classes):
        for path in sorted((root / split / class_name).iterdir()):
            images.append(np.asarray(Image.open(path)).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), labels


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = image_folder._decode_image

    def counting(data: bytes, where: str) -> tuple[np.ndarray, str]:
        calls.append(where)
        return original(data, where)

    monkeypatch.setattr(image_folder, "_decode_image", counting)
    return calls


def test_directory_loads_in_class_and_file_order(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    raw = _load(root, tmp_path / "cache")
    assert raw.classes == ("cat", "dog")
    assert raw.name == "folder"
    for split in ("train", "test"):
        images, labels = _expected(root, split)
        assert getattr(raw, f"{split}_images").dtype == torch.uint8
        np.testing.assert_array_equal(getattr(raw, f"{split}_images").numpy(), images)
        assert getattr(raw, f"{split}_labels").tolist() == labels
    assert raw.train_images.shape == (6, 3, 8, 8)
    assert raw.test_images.shape == (4, 3, 8, 8)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_archive_equals_directory(make_folder, make_tar, tmp_path: Path, suffix: str) -> None:
    root = make_folder()
    archive = make_tar(root, tmp_path / f"tiny{suffix}")
    from_dir = _load(root, tmp_path / "cache")
    from_tar = _load(archive, tmp_path / "cache")
    assert from_tar.classes == from_dir.classes
    assert from_tar.name == "tiny"
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(from_tar, key), getattr(from_dir, key))


def test_second_call_is_served_from_cache(
    make_folder, make_tar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tar(make_folder(), tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    calls = _count_decodes(monkeypatch)
    first = _load(archive, cache)
    assert len(calls) == 10
    entry = cache / hashlib.sha256(archive.read_bytes()).hexdigest()
    assert sorted(p.name for p in entry.iterdir()) == ["arrays.safetensors", "meta.json"]
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary directory left
    second = _load(archive, cache)
    assert len(calls) == 10  # no decoding the second time
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert second.classes == first.classes


def test_directory_cache_follows_content(
    make_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder()
    cache = tmp_path / "cache"
    calls = _count_decodes(monkeypatch)
    _load(root, cache)
    _load(root, cache)
    assert len(calls) == 10
    changed = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(changed).save(root / "test" / "dog" / "0001.png")
    raw = _load(root, cache)
    assert len(calls) == 20  # the changed image invalidated the key
    np.testing.assert_array_equal(raw.test_images[-1].numpy(), changed.transpose(2, 0, 1))
    assert len(list(cache.iterdir())) == 2


def test_damaged_cache_is_rebuilt(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    cache = tmp_path / "cache"
    first = _load(root, cache)
    (arrays,) = cache.glob("*/arrays.safetensors")
    arrays.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        second = _load(root, cache)
    assert torch.equal(first.train_images, second.train_images)
    assert _load(root, cache).classes == ("cat", "dog")  # rebuilt entry is valid again


def test_hidden_and_top_level_extras_are_ignored(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    (root / "README.txt").write_text("hi")
    (root / "train" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"\0")
    raw = _load(root, tmp_path / "cache")
    assert raw.train_images.shape[0] == 6


# --- errors ---------------------------------------------------------------------------------------


def _error(source: Path, tmp_path: Path) -> str:
    with pytest.raises(DataError) as err:
        _load(source, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    assert f"{missing} does not exist" in _error(missing, tmp_path)


def test_unsupported_source_file(tmp_path: Path) -> None:
    source = tmp_path / "images.zip"
    source.write_bytes(b"PK")
    assert f"{source} is neither a directory nor a .tar/.tar.gz/.tgz" in _error(source, tmp_path)


def test_corrupt_archive(tmp_path: Path) -> None:
    source = tmp_path / "random.tar.gz"
    source.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert str(source) in _error(source, tmp_path)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_unreadable_image_in_directory(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    assert f"cannot decode image {bad}" in _error(root, tmp_path)


def test_unreadable_image_in_archive(make_folder, make_tar, tmp_path: Path) -> None:
    root = make_folder()
    (root / "test" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    archive = make_tar(root, tmp_path / "tiny.tar.gz")
    assert f"cannot decode image {archive}:test/cat/broken.jpg" in _error(archive, tmp_path)


def test_wrong_size(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    bad = root / "train" / "dog" / "big.png"
    Image.fromarray(np.zeros((16, 12, 3), dtype=np.uint8)).save(bad)
    assert f"image {bad} is 12x16 (WxH); expected 8x8" in _error(root, tmp_path)


def test_wrong_mode(make_folder, make_tar, tmp_path: Path) -> None:
    root = make_folder()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(root / "test/dog/gray.png")
    assert f"image {root / 'test/dog/gray.png'} has mode L; expected RGB" in _error(root, tmp_path)
    archive = make_tar(root, tmp_path / "tiny.tar")
    assert f"image {archive}:test/dog/gray.png has mode L; expected RGB" in _error(
        archive, tmp_path
    )


def test_empty_class_folder(make_folder, make_tar, tmp_path: Path) -> None:
    root = make_folder()
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    shutil.copy(root / "test" / "cat" / "0000.png", root / "test" / "bird" / "0000.png")
    expected = f"class folder {root / 'train' / 'bird'} is empty"
    assert expected in _error(root, tmp_path)
    archive = make_tar(root, tmp_path / "tiny.tar.gz")
    assert f"class folder {archive}:train/bird is empty" in _error(archive, tmp_path)


def test_classes_differ_between_splits(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    shutil.rmtree(root / "test" / "dog")
    message = _error(root, tmp_path)
    assert str(root) in message and "only in train ['dog'], only in test []" in message


def test_missing_split(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    shutil.rmtree(root / "test")
    assert f"{root} has no class folders under 'test/'" in _error(root, tmp_path)


def test_misplaced_file_in_split(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    stray = root / "train" / "stray.png"
    stray.write_bytes(b"x")
    assert f"unexpected file {stray}" in _error(root, tmp_path)


def _archive_with(tmp_path: Path, make_folder, make_tar, info: tarfile.TarInfo) -> Path:
    archive = make_tar(make_folder(), tmp_path / "tiny.tar")
    with tarfile.open(archive, "a") as tar:
        tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return archive


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil.png", tarfile.REGTYPE),
        ("/abs/evil.png", tarfile.REGTYPE),
        ("train/cat/link.png", tarfile.SYMTYPE),
    ],
)
def test_archive_refuses_unsafe_members(
    make_folder, make_tar, tmp_path: Path, name: str, kind: bytes
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        info.size = 1
    archive = _archive_with(tmp_path, make_folder, make_tar, info)
    message = _error(archive, tmp_path)
    assert f"refusing tar member {name!r} in {archive}" in message
    assert not (tmp_path / "evil.png").exists()
