"""A tiny trained model and a synthetic separable data set for attack tests.

Class ``c`` images are ``0.5 + SIGNAL * pattern_c + NOISE * u`` clamped to [0,1], with a fixed
random +-1 pattern per class and uniform noise. The signal is weak enough that an L-inf eps of a
few /255 flips many predictions, strong enough that clean accuracy is near 100%.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from cslrobust.seeding import make_generator, rng_scope

N_CLASSES = 4
SHAPE = (3, 8, 8)
SIGNAL = 0.06
NOISE = 0.3


class Normalize(nn.Module):
    """Per-channel normalisation held as buffers, as the model contract requires."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def make_toy_model() -> nn.Module:
    return nn.Sequential(
        Normalize(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.2, 0.2, 0.2])),
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, N_CLASSES),
    )


def make_toy_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    patterns = (
        torch.randint(0, 2, (N_CLASSES, *SHAPE), generator=make_generator(0, "patterns")) * 2.0 - 1
    )
    generator = make_generator(seed, "toy-data")
    labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
    noise = torch.rand((n, *SHAPE), generator=generator) * 2 - 1
    images = (0.5 + SIGNAL * patterns[labels] + NOISE * noise).clamp(0, 1)
    return images, labels


def train_toy_model(steps: int = 300) -> nn.Module:
    images, labels = make_toy_data(4096, seed=1)
    with rng_scope(0):
        model = make_toy_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for step in range(steps):
            index = torch.randint(0, images.shape[0], (128,))
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del step
    optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    """One thread: two OpenMP threads on a busy 2-core box are ~20x slower for tiny models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def _trained_model(_single_thread: None) -> nn.Module:
    return train_toy_model()


@pytest.fixture
def toy_model(_trained_model: nn.Module) -> nn.Module:
    """A fresh copy of the trained model (in training mode, as it left training) for each test."""
    return copy.deepcopy(_trained_model)


@pytest.fixture(scope="session")
def toy_test_data() -> tuple[Tensor, Tensor]:
    return make_toy_data(256, seed=2)
