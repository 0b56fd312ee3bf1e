"""The study description names the data: images, or clips with their evaluation samples."""

from types import SimpleNamespace

from cslrobust.config import build_run_config
from cslrobust.study.report.writer import _data_line


def _cell(values: dict) -> SimpleNamespace:
    return SimpleNamespace(config=build_run_config(values))


def test_data_line_for_images_and_clips() -> None:
    image = _cell({"model": {"width": 8}})
    clip = _cell(
        {
            "data": {"name": "synthetic_clips", "frames": 8, "eval_clips": 2},
            "augment": {"kind": "simclr_clip", "frames": 6},
            "model": {"arch": "r3d_18", "width": 8},
        }
    )
    assert _data_line([image, image]) == "Data: `cifar10` images; model `resnet18` width 8."
    line = _data_line([clip])
    assert line is not None
    assert line.startswith("Data: `synthetic_clips` (camera) clips: 8 frames per training clip")
    assert (
        "the model sees 6-frame clips; an evaluation sample is 2 uniformly placed clip(s)" in line
    )
    assert line.endswith("model `r3d_18` width 8.")
    assert _data_line([SimpleNamespace(config=SimpleNamespace(name="x"))]) is None
