"""Decoding speed of PyAV per video file: frames/s at the native size and resized (issue 16).

Decodes every frame of each file (``decode_frames``, no cache) ``--repeats`` times and prints, per file
and per output size, the codec, frame count and the best frames/s. Also times reading the decoded
frames back from the frame cache (what every epoch after the first costs).

    .venv/bin/python benchmarks/video_decode.py ../shared/data/video-samples --sizes native,112x112,32x32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av

from cslrobust.data.video import FrameCache, decode_frames


def _size(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    height, width = text.split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of video files (.mp4, .avi, ...)")
    parser.add_argument(
        "--sizes", default="native,112x112,32x32", help="comma-separated HxW or native"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="decodes per file and size (best kept)"
    )
    args = parser.parse_args()
    files = sorted(
        p for p in args.folder.iterdir() if p.suffix.lower() in {".mp4", ".avi", ".mkv", ".webm"}
    )
    print(f"PyAV {av.__version__}, FFmpeg threads: AUTO")
    print(
        f"{'file':36s} {'codec':6s} {'stored':>10s} {'size':>8s} {'frames':>6s} {'frames/s':>9s} {'cache frames/s':>14s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = FrameCache(Path(tmp))
        for path in files:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                codec, stored = stream.codec_context.name, f"{stream.width}x{stream.height}"
            for text in args.sizes.split(","):
                size = _size(text)
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    frames = decode_frames(path, size)
                    best = min(best, time.perf_counter() - start)
                cache.frames(path, size)  # fill
                start = time.perf_counter()
                cache.frames(path, size)
                cached = time.perf_counter() - start
                n = frames.shape[0]
                print(
                    f"{path.name:36s} {codec:6s} {stored:>10s} {text:>8s} {n:6d} {n / best:9.0f} {n / cached:14.0f}"
                )


if __name__ == "__main__":
    main()
