import numpy as np
import pytest
import torch

from cslrobust.corruptions.cifar_c import load_official
from cslrobust.errors import ConfigError, DataError

N = 4  # images per severity in the fake release


@pytest.fixture
def release(tmp_path):
    images = np.zeros((5 * N, 32, 32, 3), np.uint8)
    for severity in range(5):
        images[severity * N : (severity + 1) * N] = severity + 1
    images[:, 0, 0] = [10, 20, 30]  # a pixel that reveals the channel order
    np.save(tmp_path / "gaussian_noise.npy", images)
    np.save(tmp_path / "speckle_noise.npy", images)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(N, dtype=np.uint8), 5))
    return tmp_path


def test_load_one_severity_channels_first(release):
    images, labels = load_official(release, "gaussian_noise", 3)
    assert images.shape == (N, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == list(range(N)) and labels.dtype == torch.int64
    assert torch.all(images[:, :, 1:, 1:] == 3)
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]


def test_the_held_out_corruptions_load_too(release):
    images, _ = load_official(release, "speckle_noise", 5)
    assert torch.all(images[:, :, 1:, 1:] == 5)


def test_missing_files(release):
    with pytest.raises(DataError, match="missing .*frost.npy"):
        load_official(release, "frost", 1)
    (release / "labels.npy").unlink()
    with pytest.raises(DataError, match="missing .*labels.npy"):
        load_official(release, "gaussian_noise", 1)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((5 * N, 32, 32), np.uint8), "expected uint8"),
        (np.zeros((5 * N, 32, 32, 3), np.float32), "expected uint8"),
        (np.zeros((5 * N, 3, 32, 32), np.uint8), "expected uint8"),
        (np.zeros((5 * N + 1, 32, 32, 3), np.uint8), "5 severities"),
    ],
)
def test_wrong_shapes_are_data_errors(release, array, match):
    np.save(release / "gaussian_noise.npy", array)
    with pytest.raises(DataError, match=match):
        load_official(release, "gaussian_noise", 1)


def test_labels_must_match_the_images(release):
    np.save(release / "labels.npy", np.zeros(2 * N, np.uint8))
    with pytest.raises(DataError, match="expected integer labels of shape"):
        load_official(release, "gaussian_noise", 1)
    np.save(release / "labels.npy", np.zeros(5 * N, np.float32))
    with pytest.raises(DataError, match="expected integer labels of shape"):
        load_official(release, "gaussian_noise", 1)


def test_pickled_or_garbage_files_are_refused(release):
    np.save(release / "gaussian_noise.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        load_official(release, "gaussian_noise", 1)
    (release / "gaussian_noise.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_official(release, "gaussian_noise", 1)


def test_bad_name_or_severity(release):
    with pytest.raises(ConfigError, match="unknown CIFAR-C corruption"):
        load_official(release, "rain", 1)
    with pytest.raises(ConfigError, match="severity"):
        load_official(release, "gaussian_noise", 0)


def test_errors_are_one_line(release):
    with pytest.raises(DataError) as info:
        load_official(release / "nowhere", "gaussian_noise", 1)
    assert "\n" not in str(info.value)
