from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cslrobust.data import video as video_module
from cslrobust.data.video import (
    FrameCache,
    StreamingVideoDataset,
    VideoClipDataset,
    VideoEntry,
    decode_frames,
    eval_clip_indices,
    hmdb51_split,
    load_videos,
    train_clip_indices,
    ucf101_split,
)
from cslrobust.errors import ConfigError, DataError

# The real clips live beside the repository (../shared/data/video-samples), never in it.
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video-samples"
FRAME_COUNTS = {  # measured by decoding every frame (video-samples/README.md)
    "demo.mp4": 280,
    "test.mp4": 300,
    "test.avi": 164,
    "ntu_S001C001P001R001A001_rgb.avi": 103,
}
SIZE = (24, 32)
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason=f"the real sample videos are not here ({SAMPLES}); see shared/data/video-samples/README.md",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FrameCache:
    """One cache for the module: every sample is decoded once."""
    return FrameCache(tmp_path_factory.mktemp("frames"))


@needs_samples
@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_decode_every_sample_and_cut_clips(name: str, cache: FrameCache) -> None:
    frames = cache.frames(SAMPLES / name, SIZE)
    assert frames.dtype == np.uint8 and frames.shape == (FRAME_COUNTS[name], *SIZE, 3)
    assert 10 < frames.mean() < 245 and frames.std() > 5  # real pictures, not a blank
    video = torch.from_numpy(frames)
    dataset = VideoClipDataset([video], [0], frames=8, stride=4)
    clip = dataset.train_clip(0, torch.Generator().manual_seed(0))
    assert clip.shape == (3, 8, *SIZE) and clip.dtype == torch.uint8
    clips = dataset.eval_clips(0, 3)
    assert clips.shape == (3, 3, 8, *SIZE)
    last = eval_clip_indices(FRAME_COUNTS[name], 8, 4, 3)[-1, -1]
    assert torch.equal(clips[-1, :, -1], video[last].permute(2, 0, 1))  # ends at the last frame


@needs_samples
def test_native_size_and_area_resize() -> None:
    native = decode_frames(SAMPLES / "test.avi")
    assert native.shape == (164, 240, 320, 3)
    small = decode_frames(SAMPLES / "test.avi", (120, 160))
    # a 2x area downscale is close to the 2x2 block mean of the native frames
    blocks = native[:5].reshape(5, 120, 2, 160, 2, 3).mean(axis=(2, 4))
    assert np.abs(small[:5].astype(float) - blocks).mean() < 3


@needs_samples
@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_a_truncated_video_is_one_line_naming_the_file(name: str, tmp_path: Path) -> None:
    data = (SAMPLES / name).read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        decode_frames(cut, SIZE)
    message = str(info.value)
    assert "\n" not in message and str(cut) in message
    assert "truncated" in message or "cannot decode" in message


def test_not_a_video_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    with pytest.raises(DataError, match=r"cannot decode video .*notes.mp4: ") as info:
        decode_frames(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="cannot read video .*absent.avi"):
        FrameCache(tmp_path / "c").frames(tmp_path / "absent.avi")


@needs_samples
def test_cache_decodes_once_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FrameCache(tmp_path / "cache")
    first = cache.frames(SAMPLES / "test.avi", SIZE)
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name.endswith(f"-{SIZE[0]}x{SIZE[1]}.npy")
    assert np.array_equal(np.load(entry, allow_pickle=False), first)  # a plain array, no pickle
    copy = tmp_path / "elsewhere.avi"
    shutil.copy(SAMPLES / "test.avi", copy)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(video_module, "decode_frames", no_decoding)
    assert np.array_equal(cache.frames(copy, SIZE), first)  # same bytes, other path: cached
    monkeypatch.undo()
    entry.write_bytes(b"damaged")
    assert np.array_equal(cache.frames(copy, SIZE), first)  # re-decoded and replaced
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.name]  # no temp left


def test_clip_indices() -> None:
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        index = train_clip_indices(40, 8, 3, gen)
        assert torch.equal(index - index[0], 3 * torch.arange(8))
        assert 0 <= index[0] and index[-1] <= 39
        starts.add(int(index[0]))
    assert starts == set(range(40 - 22 + 1))  # every start where the span of 22 frames fits
    a = train_clip_indices(40, 8, 3, torch.Generator().manual_seed(5))
    b = train_clip_indices(40, 8, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert train_clip_indices(5, 4, 2, gen).tolist() == [0, 2, 4, 4]  # short: last frame repeated
    evals = eval_clip_indices(100, 8, 2, 5)
    assert evals.shape == (5, 8)
    assert evals[0, 0] == 0 and evals[-1, -1] == 99
    assert torch.all(evals[1:, 0] > evals[:-1, 0])
    assert eval_clip_indices(10, 8, 2, 3).tolist()[0] == [0, 2, 4, 6, 8, 9, 9, 9]
    with pytest.raises(ConfigError, match="frames and stride must be >= 1"):
        train_clip_indices(10, 0, 1, gen)
    with pytest.raises(ConfigError, match="clips per video"):
        eval_clip_indices(10, 2, 1, 0)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


@needs_samples
def test_ucf101_layout_and_split_files(tmp_path: Path) -> None:
    root, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    videos = {
        "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g08_c01.avi"],
        "Archery": ["v_Archery_g01_c01.avi", "v_Archery_g08_c01.avi"],
    }
    for folder, names in videos.items():
        for name in names:
            _link(SAMPLES / "test.avi", root / folder / name)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n"
    )
    split = ucf101_split(root, lists, 1)
    assert split.classes == ("ApplyEyeMakeup", "Archery")
    assert [(e.path.name, e.label) for e in split.train] == [
        ("v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("v_Archery_g08_c01.avi", 1),
    ]
    assert [e.label for e in split.test] == [0, 1]
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(
        DataError, match=r"trainlist01.txt line 1: label 1 but 'Archery' is class 2"
    ):
        ucf101_split(root, lists, 1)
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g09_c01.avi 2\n")
    with pytest.raises(DataError, match=r"1 video\(s\) listed in .*trainlist01.txt are missing"):
        ucf101_split(root, lists, 1)
    with pytest.raises(DataError, match="cannot read split file .*trainlist02.txt"):
        ucf101_split(root, lists, 2)
    with pytest.raises(ConfigError, match="fold must be one of"):
        ucf101_split(root, lists, 4)


@needs_samples
def test_hmdb51_layout_and_split_flags(tmp_path: Path) -> None:
    root, lists = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    for cls in ("wave", "clap"):
        for k in range(3):
            _link(SAMPLES / "test.mp4", root / cls / f"{cls}_{k}.avi")
        (lists / f"{cls}_test_split1.txt").write_text(
            f"{cls}_0.avi 1 \n{cls}_1.avi 2 \n{cls}_2.avi 0 \n"
        )
    split = hmdb51_split(root, lists, 1)
    assert split.classes == ("clap", "wave")
    assert [(e.path.name, e.label) for e in split.train] == [("clap_0.avi", 0), ("wave_0.avi", 1)]
    assert [(e.path.name, e.label) for e in split.test] == [("clap_1.avi", 0), ("wave_1.avi", 1)]
    with pytest.raises(DataError, match="no HMDB51 split files"):
        hmdb51_split(root, lists, 2)
    (lists / "wave_test_split1.txt").write_text("wave_0.avi 3\n")
    with pytest.raises(DataError, match=r"wave_test_split1.txt line 1: expected"):
        hmdb51_split(root, lists, 1)


@needs_samples
def test_skip_bad_lists_the_skipped_files(tmp_path: Path, cache: FrameCache) -> None:
    cut = tmp_path / "cut.avi"
    data = (SAMPLES / "test.avi").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    entries = [VideoEntry(SAMPLES / "test.avi", 0), VideoEntry(cut, 1)]
    with pytest.raises(DataError, match="cut.avi is truncated"):
        load_videos(entries, cache, SIZE)
    loaded = load_videos(entries, cache, SIZE, skip_bad=True)
    assert loaded.labels == [0] and [e.path for e in loaded.entries] == [SAMPLES / "test.avi"]
    assert len(loaded.skipped) == 1 and loaded.skipped[0][0] == cut
    assert "truncated" in loaded.skipped[0][1]


def test_in_memory_and_streaming_datasets(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    videos = [
        torch.randint(0, 256, (n, 6, 8, 3), generator=gen, dtype=torch.uint8) for n in (12, 20, 9)
    ]
    memory = VideoClipDataset(videos, [0, 1, 0], frames=4, stride=2)
    assert memory.layout == "clip" and len(memory) == 3
    batches = list(
        memory.batches(2, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=False)
    )
    assert [b.images.shape for b in batches] == [(2, 3, 4, 6, 8), (1, 3, 4, 6, 8)]
    assert all(0 <= b.images.min() and b.images.max() <= 1 for b in batches)
    again = list(
        memory.batches(2, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=False)
    )
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, again, strict=True))

    # The streaming set reads the same frames through the cache: fake the cache with the arrays.
    class ArrayCache(FrameCache):
        def frames(self, path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
            return videos[int(path.name)].numpy()

    entries = [VideoEntry(Path(str(i)), label) for i, label in enumerate([0, 1, 0])]
    stream = StreamingVideoDataset(
        entries, ArrayCache(tmp_path), (6, 8), frames=4, stride=2, seed=3
    )
    i, clip, label = stream[1]
    assert (i, label) == (1, 1) and clip.shape == (3, 4, 6, 8) and clip.dtype == torch.uint8
    assert torch.equal(stream[1][1], clip)  # the same item in any order / worker
    seen = set()
    for epoch in range(8):
        stream.set_epoch(epoch)
        seen.add(stream[1][1].sum().item())
    assert len(seen) > 1  # new positions each epoch
    frames = clip.permute(1, 2, 3, 0)  # (T, H, W, 3)
    matches = [s for s in range(20 - 6) if torch.equal(videos[1][s : s + 7 : 2], frames)]
    assert len(matches) == 1  # four frames two apart, cut from video 1
