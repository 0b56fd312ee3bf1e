import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cslrobust.corruptions import generate
from cslrobust.corruptions.generate import (
    GENERATOR_VERSION,
    cache_path,
    corrupt,
    corrupted_test_set,
    images_digest,
)
from cslrobust.corruptions.registry import CORRUPTION_NAMES, SEVERITIES
from cslrobust.errors import ConfigError

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
}


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_every_severity_keeps_shape_dtype_and_is_reproducible(images, name):
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=0)
        assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
        assert 0 < out.float().std() and 5 < out.float().mean() < 250  # not degenerate
        assert torch.equal(out, corrupt(images.clone(), name, severity, seed=0))
    assert not torch.equal(corrupt(images, name, 5, seed=0), images)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_seed_changes_exactly_the_random_corruptions(images, name):
    for severity in (1, 5):
        a = corrupt(images, name, severity, seed=0)
        b = corrupt(images, name, severity, seed=1)
        assert torch.equal(a, b) == (name not in RANDOM), (name, severity)


def test_chunking_is_part_of_the_fixed_order(images, monkeypatch):
    monkeypatch.setattr(generate, "CHUNK", 3)
    out = corrupt(images, "gaussian_noise", 2, seed=0)
    assert out.shape == images.shape
    assert torch.equal(out, corrupt(images, "gaussian_noise", 2, seed=0))


@pytest.mark.parametrize("severity", [0, 6, 2.0, True])
def test_bad_severity_is_a_config_error(images, severity):
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, "contrast", severity, seed=0)


def test_bad_name_and_images_are_rejected(images):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(images, "rain", 1, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float() / 255, "contrast", 1, seed=0)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        corrupt(images[:, :, :28, :28], "contrast", 1, seed=0)


class _CountingCorrupt:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return corrupt(*args, **kwargs)


def test_cache_second_call_loads_from_disk(images, tmp_path, monkeypatch):
    counter = _CountingCorrupt()
    monkeypatch.setattr(generate, "corrupt", counter)
    first = corrupted_test_set(images, "fog", 3, seed=7, cache_dir=tmp_path)
    second = corrupted_test_set(images, "fog", 3, seed=7, cache_dir=tmp_path)
    assert counter.calls == 1
    assert torch.equal(first, second) and torch.equal(first, corrupt(images, "fog", 3, 7))
    path = cache_path(tmp_path, images_digest(images), "fog", 3, 7)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["images_sha256"] == images_digest(images)
    assert meta["generator_version"] == GENERATOR_VERSION
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_cache_key_covers_images_severity_and_seed(images, tmp_path, monkeypatch):
    counter = _CountingCorrupt()
    monkeypatch.setattr(generate, "corrupt", counter)
    corrupted_test_set(images, "fog", 3, seed=7, cache_dir=tmp_path)
    corrupted_test_set(images, "fog", 3, seed=8, cache_dir=tmp_path)
    corrupted_test_set(images, "fog", 4, seed=7, cache_dir=tmp_path)
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    corrupted_test_set(changed, "fog", 3, seed=7, cache_dir=tmp_path)
    assert counter.calls == 4
    assert images_digest(images) != images_digest(images.reshape(4, 6, 32, 32))


def test_a_crash_while_writing_leaves_no_entry(images, tmp_path, monkeypatch):
    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        corrupted_test_set(images, "contrast", 2, seed=0, cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    out = corrupted_test_set(images, "contrast", 2, seed=0, cache_dir=tmp_path)
    assert torch.equal(out, corrupt(images, "contrast", 2, 0))


def test_a_damaged_entry_is_recomputed_and_replaced(images, tmp_path, monkeypatch):
    path = cache_path(tmp_path, images_digest(images), "contrast", 2, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    counter = _CountingCorrupt()
    monkeypatch.setattr(generate, "corrupt", counter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = corrupted_test_set(images, "contrast", 2, seed=0, cache_dir=tmp_path)
    assert counter.calls == 1 and any("unreadable" in str(w.message) for w in caught)
    assert torch.equal(out, corrupted_test_set(images, "contrast", 2, seed=0, cache_dir=tmp_path))
    assert counter.calls == 1


def test_no_cache_dir_means_no_files(images, tmp_path):
    out = corrupted_test_set(images, "pixelate", 1, seed=0, cache_dir=None)
    assert torch.equal(out, corrupt(images, "pixelate", 1, 0))
    assert not any(tmp_path.iterdir())


def test_generation_seed_streams_are_independent_of_the_global_rng(images):
    np.random.seed(1)
    torch.manual_seed(1)
    a = corrupt(images, "snow", 2, seed=3)
    np.random.seed(2)
    torch.manual_seed(2)
    assert torch.equal(a, corrupt(images, "snow", 2, seed=3))
