"""Corruptions of clips: frame by frame, each frame one image of the corrupted set."""

import torch

from cslrobust.corruptions.evaluate import evaluate_corruptions
from cslrobust.corruptions.generate import corrupt


def test_clips_are_corrupted_frame_by_frame(tmp_path) -> None:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(0)
    n, t = 3, 4
    clips = torch.randint(0, 256, (n, 3, t, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n)
    frames = clips.transpose(1, 2).flatten(0, 1)  # (N*T, 3, H, W): frame t of clip i = i*T + t
    expected = corrupt(frames, "gaussian_noise", 3, 7).view(n, t, 3, 32, 32).transpose(1, 2)
    seen: list[torch.Tensor] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        # Class k is right for clip k only when clip k equals the expected corrupted clip k.
        match = torch.tensor(
            [torch.equal((x[i] * 255).round().to(torch.uint8), expected[i]) for i in range(len(x))]
        )
        return torch.nn.functional.one_hot(torch.arange(len(x)), n).float() * match.view(-1, 1)

    rows = evaluate_corruptions(
        predict,
        clips,
        labels,
        names=["gaussian_noise"],
        severities=[3],
        seed=7,
        cache_dir=tmp_path,
        batch_size=8,
    )
    assert [r["accuracy"] for r in rows] == [1.0]
    assert seen[0].shape == (n, 3, t, 32, 32)
    # Noise is drawn per frame: two frames of one clip get different noise.
    noise = expected.float() - clips.float()
    assert not torch.equal(noise[:, :, 0], noise[:, :, 1])
