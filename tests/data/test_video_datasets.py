"""UCF101 / HMDB51 through ``build_video_datasets`` and the CLI, on fake trees of the real samples.

The trees hold links to the shared sample videos (``../shared/data/video-samples``) under official
names, with split files in the official formats; the tests skip when the samples are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cslrobust.cli.main import app
from cslrobust.data import ClipSettings, DataSplits, TensorClipDataset, VideoClipDataset
from cslrobust.data.video import FrameCache, build_video_datasets, eval_clip_indices
from cslrobust.errors import ConfigError, DataError

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video-samples"
# Three samples of distinct lengths: a video is known by (label, frame count).
LENGTHS = {"test.avi": 164, "demo.mp4": 280, "test.mp4": 300}
SOURCES = tuple(LENGTHS)
UCF_CLASSES = ("ApplyEyeMakeup", "Archery")
SIDE = 16
pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason=f"the real sample videos are not here ({SAMPLES}); see shared/data/video-samples/README.md",
)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


def make_ucf101(base: Path, n_train: int = 3, n_test: int = 2) -> tuple[Path, Path]:
    """``UCF-101/<Class>/v_<Class>_gGG_c01.avi`` and ``ucfTrainTestlist`` (split 1)."""
    root, lists = base / "UCF-101", base / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    train_lines, test_lines = [], []
    for k, cls in enumerate(UCF_CLASSES):
        for g in range(n_train + n_test):
            name = f"{cls}/v_{cls}_g{g + 1:02d}_c01.avi"
            _link(SAMPLES / SOURCES[(g + k) % len(SOURCES)], root / name)
            if g < n_train:
                train_lines.append(f"{name} {k + 1}")
            else:
                test_lines.append(name)
    (lists / "classInd.txt").write_text(
        "".join(f"{k + 1} {c}\r\n" for k, c in enumerate(UCF_CLASSES))
    )
    (lists / "trainlist01.txt").write_text("\r\n".join(train_lines) + "\r\n")
    (lists / "testlist01.txt").write_text("\r\n".join(test_lines) + "\r\n")
    return root, lists


def make_hmdb51(base: Path) -> tuple[Path, Path]:
    """``hmdb51/<class>/<video>.avi`` and ``testTrainMulti_7030_splits/<class>_test_split1.txt``."""
    root, lists = base / "hmdb51", base / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for k, cls in enumerate(("wave", "clap")):
        flags = (1, 1, 1, 2, 0)  # three train, one test, one unused in this split
        lines = []
        for g, flag in enumerate(flags):
            name = f"{cls}_{g}.avi"
            _link(SAMPLES / SOURCES[(g + k) % len(SOURCES)], root / cls / name)
            lines.append(f"{name} {flag} ")
        (lists / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    return root, lists


def clip_settings(split_dir: Path, **changes: object) -> ClipSettings:
    settings: dict[str, object] = dict(
        frames=6, view_frames=4, eval_clips=2, stride=2, size=SIDE, split_dir=split_dir
    )
    settings.update(changes)
    return ClipSettings(**settings)  # type: ignore[arg-type]


def build(name: str, root: Path, clips: ClipSettings, cache: Path, **kw: object) -> DataSplits:
    args: dict[str, object] = dict(
        source=root,
        cache_root=cache,
        train_per_class=None,
        val_per_class=1,
        seed=0,
        device="cpu",
        progress=False,
        clips=clips,
    )
    args.update(kw)
    return build_video_datasets(name, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the module: every sample is decoded once per size."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ucf(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, Path, DataSplits]:
    root, lists = make_ucf101(tmp_path_factory.mktemp("ucf"))
    return root, lists, build("ucf101", root, clip_settings(lists), cache)


def _decoded(cache: Path, path: Path) -> torch.Tensor:
    return torch.from_numpy(FrameCache(cache / "video_frames").frames(path, (SIDE, SIDE)))


def _expected_sample(video: torch.Tensor, frames: int, stride: int, clips: int) -> torch.Tensor:
    index = eval_clip_indices(video.shape[0], frames, stride, clips).flatten()
    return video[index].permute(3, 0, 1, 2)  # (3, clips * frames, H, W)


def test_ucf101_shapes_dtypes_layout_and_stats(ucf: tuple[Path, Path, DataSplits]) -> None:
    _, _, splits = ucf
    assert splits.layout == "clip" and splits.classes == UCF_CLASSES and splits.skipped == ()
    train = splits.train
    assert isinstance(train, VideoClipDataset) and train.layout == "clip"
    assert (len(train), len(splits.val), len(splits.test)) == (4, 2, 4)  # 3 - 1 val per class
    assert train.device == torch.device("cpu") and train.labels.tolist() == [0, 0, 1, 1]
    for data, n in ((splits.val, 2), (splits.test, 4), (splits.probe_train, 4)):
        assert isinstance(data, TensorClipDataset)
        assert data.images.dtype == torch.uint8 and data.images.shape == (n, 3, 8, SIDE, SIDE)
    assert splits.probe_train is splits.train_eval
    (batch,) = train.batches(
        4, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    )
    assert batch.images.shape == (4, 3, 6, SIDE, SIDE) and batch.images.dtype == torch.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert batch.images.is_contiguous()
    assert torch.equal(batch.labels, train.labels[batch.index])
    # Per-channel statistics over every training frame (float64 oracle).
    pixels = torch.cat([v.reshape(-1, 3).double() / 255 for v in train.videos])  # (pixels, 3)
    torch.testing.assert_close(torch.tensor(splits.mean, dtype=torch.float64), pixels.mean(0))
    torch.testing.assert_close(
        torch.tensor(splits.std, dtype=torch.float64), pixels.std(0, correction=0)
    )


def test_ucf101_val_is_disjoint_from_train_and_eval_samples_are_the_planned_frames(
    ucf: tuple[Path, Path, DataSplits], cache: Path
) -> None:
    root, lists, splits = ucf
    assert isinstance(splits.train, VideoClipDataset)
    listed = {}  # (label, source) of every train-list entry -> decoded frames
    for line in (lists / "trainlist01.txt").read_text().split():
        if "/" in line:
            path = root / line
            label = UCF_CLASSES.index(line.split("/")[0])
            listed[(label, path.resolve().name)] = _decoded(cache, path)
    by_length = {n: s for s, n in LENGTHS.items()}
    train_ids = {
        (int(y), by_length[v.shape[0]])
        for v, y in zip(splits.train.videos, splits.train.labels, strict=True)
    }
    val_ids = set()
    for sample, label in zip(splits.val.images, splits.val.labels.tolist(), strict=True):
        matches = [
            key
            for key, video in listed.items()
            if key[0] == label and torch.equal(sample, _expected_sample(video, 4, 2, 2))
        ]
        assert len(matches) == 1
        val_ids.add(matches[0])
    assert len(train_ids) == 4 and len(val_ids) == 2
    assert not train_ids & val_ids and train_ids | val_ids == set(listed)
    # Test samples: the listed test videos in order, cut by eval_clip_indices.
    test_paths = [root / p for p in (lists / "testlist01.txt").read_text().split()]
    for sample, path in zip(splits.test.images, test_paths, strict=True):
        assert torch.equal(sample, _expected_sample(_decoded(cache, path), 4, 2, 2))
    assert splits.train_eval is not None
    for sample, video in zip(splits.train_eval.images, splits.train.videos, strict=True):
        assert torch.equal(sample, _expected_sample(video, 4, 2, 2))


def test_batches_split_over_ranks_and_windows_follow_the_generator(
    ucf: tuple[Path, Path, DataSplits],
) -> None:
    _, _, splits = ucf
    train = splits.train
    assert isinstance(train, VideoClipDataset)

    def epoch(rank: int, world: int, seed: int = 5) -> dict[int, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        out = {}
        kw = dict(shuffle=True, generator=gen, drop_last=False, rank=rank, world_size=world)
        batches = list(train.batches(1, **kw))  # type: ignore[arg-type]
        assert len(batches) == train.num_batches(1, False, world)
        for batch in batches:
            out[int(batch.index)] = batch.images[0]
        return out

    one = epoch(0, 1)
    rank0, rank1 = epoch(0, 2), epoch(1, 2)
    assert len(rank0) == len(rank1) == 2 and not rank0.keys() & rank1.keys()
    assert rank0.keys() | rank1.keys() == set(range(4))
    for i, clip in {**rank0, **rank1}.items():
        assert torch.equal(clip, one[i])  # a video's window does not depend on the ranks
    again = epoch(0, 1)
    assert all(torch.equal(one[i], again[i]) for i in one)  # same generator -> same windows
    other = epoch(0, 1, seed=6)
    assert any(not torch.equal(one[i], other[i]) for i in one)
    # Each clip is 6 frames 2 apart from its video, at the drawn start.
    order_draw = torch.Generator().manual_seed(5)
    torch.randperm(4, generator=order_draw)  # batches draws the order first
    starts = train.window_starts(order_draw)
    for i, clip in one.items():
        video = train.videos[i]
        frames = video[starts[i] + 2 * torch.arange(6)].permute(3, 0, 1, 2).float() / 255
        assert torch.equal(clip, frames)
    assert train.num_batches(3, True, 2) == 0 and train.num_batches(1, True, 3) == 1
    centred = train.window_starts(None)
    assert centred.tolist() == [(n - 11) // 2 for n in (v.shape[0] for v in train.videos)]


def test_hmdb51_official_flags(tmp_path: Path, cache: Path) -> None:
    root, lists = make_hmdb51(tmp_path)
    splits = build("hmdb51", root, clip_settings(lists, eval_clips=1, view_frames=6), cache)
    assert splits.classes == ("clap", "wave")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert splits.test.images.shape == (2, 3, 6, SIDE, SIDE)
    assert splits.test.labels.tolist() == [0, 1]
    subset = build("hmdb51", root, clip_settings(lists), cache, train_per_class=1)
    assert len(subset.train) == 2 and subset.train.labels.tolist() == [0, 1]


def test_bad_videos_fail_in_one_line_or_are_skipped_and_listed(tmp_path: Path, cache: Path) -> None:
    root, lists = make_ucf101(tmp_path)
    bad = root / "Archery" / "v_Archery_g05_c01.avi"  # a test video
    data = (SAMPLES / "test.avi").read_bytes()
    bad.unlink()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        build("ucf101", root, clip_settings(lists), cache)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "truncated" in message
    splits = build("ucf101", root, clip_settings(lists, skip_bad=True), cache)
    assert len(splits.test) == 3 and [p for p, _ in splits.skipped] == [str(bad)]
    assert "truncated" in splits.skipped[0][1]
    missing = root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
    missing.unlink()
    with pytest.raises(DataError, match="missing, first: .*v_ApplyEyeMakeup_g01_c01.avi"):
        build("ucf101", root, clip_settings(lists, skip_bad=True), cache)
    with pytest.raises(ConfigError, match="augment.frames <= data.frames"):
        build("ucf101", root, clip_settings(lists, view_frames=8), cache)


def test_train_probe_attack_on_a_fake_ucf101_tree(tmp_path: Path) -> None:
    """The CLI end to end on clips, with a truncated video skipped and listed in the run folder."""
    root, lists = make_ucf101(tmp_path / "data")
    bad = root / "Archery" / "v_Archery_g05_c01.avi"
    data = (SAMPLES / "test.avi").read_bytes()
    bad.unlink()
    bad.write_bytes(data[: len(data) // 2])
    settings = [
        "data.name=ucf101",
        f"data.source={root}",
        f"data.split_dir={lists}",
        f"data.root={tmp_path / 'cache'}",
        "data.val_per_class=1",
        "data.size=32",
        "data.frames=4",
        "data.eval_clips=2",
        "data.skip_bad=true",
        "model.arch=r3d_18",
        "model.width=4",
        "model.channels_last=false",
        "augment.kind=simclr_clip",
        "augment.frames=3",
        "train.batch_size=4",
        "train.tensorboard=false",
        "probe.epochs=2",
    ]
    runner = CliRunner()
    args = ["train", "--name", "ucf", "--output-dir", str(tmp_path / "runs"), "--objective"]
    args += ["simclr", "--epochs", "1", "--device", "cpu", "--no-progress"]
    for item in settings:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "ucf"
    train = json.loads((run / "train.json").read_text())
    assert train["skipped_videos"] == 1 and train["train_images"] == 4
    skipped = json.loads((run / "skipped_videos.json").read_text())
    assert [s["path"] for s in skipped] == [str(bad)] and "truncated" in skipped[0]["reason"]
    result = runner.invoke(app, ["probe", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    probe = json.loads((run / "probe.json").read_text())
    assert probe["n_test"] == 3 and 0.0 <= probe["test_accuracy"] <= 1.0
    result = runner.invoke(
        app,
        ["attack", str(run), "--attack", "pgd", "--eps", "0,1/255", "--steps", "2"]
        + ["--no-progress"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "attack.json").read_text())["results"]
    assert {r["eps"] for r in rows} == {0.0, 1 / 255}
    for row in rows:
        assert row["robust_accuracy"] <= row["clean_accuracy"]
        if row["eps"] == 0.0:
            assert row["robust_accuracy"] == row["clean_accuracy"]


def test_streaming_reads_the_same_frames_from_the_cache_files(
    ucf: tuple[Path, Path, DataSplits], cache: Path
) -> None:
    root, lists, in_memory = ucf
    streamed = build("ucf101", root, clip_settings(lists, streaming=True), cache)
    # The training videos are memory maps of the cache files, not copies in host memory.
    mapped = FrameCache(cache / "video_frames", mmap=True).frames(
        next(iter(sorted(root.rglob("*.avi")))), (SIDE, SIDE)
    )
    assert isinstance(mapped, np.memmap)
    assert streamed.mean == in_memory.mean and streamed.std == in_memory.std
    for name in ("val", "test", "train_eval"):
        assert torch.equal(getattr(streamed, name).images, getattr(in_memory, name).images)

    def epoch(splits: DataSplits) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(3)
        batches = splits.train.batches(2, shuffle=True, generator=gen, drop_last=False)
        return [b.images for b in batches]

    assert all(torch.equal(a, b) for a, b in zip(epoch(streamed), epoch(in_memory), strict=True))


def test_streaming_is_a_video_key_outside_the_run_id() -> None:
    from cslrobust.config import build_run_config
    from cslrobust.errors import ConfigError

    base = {
        "data": {"name": "ucf101", "source": "/v", "split_dir": "/s"},
        "model": {"arch": "r3d_18", "stem": "kinetics"},
        "augment": {"kind": "simclr_clip"},
    }
    streamed = {**base, "data": {**base["data"], "streaming": True}}
    assert build_run_config(streamed).run_id() == build_run_config(base).run_id()
    with pytest.raises(ConfigError, match="streaming applies to ucf101 / hmdb51 only"):
        build_run_config({"data": {"name": "cifar10", "streaming": True}})
