"""Dual BatchNorm: separate statistics and affine parameters for clean and adversarial inputs.

ACL (Jiang et al., 2020) and DynACL (Luo et al., 2023) normalise clean and adversarial views with
different BatchNorm layers (their ``'normal'`` and ``'pgd'`` branches); the rest of the network is
shared, and the adversarial branch is the one evaluated afterwards.

Here the encoder keeps ordinary BatchNorm layers: they hold the *evaluated* branch, so its weights are
an ordinary encoder that every later stage loads without knowing about dual BN. The other branch is a
copy of every BatchNorm layer kept in :attr:`DualBatchNorm.other` (an ``nn.ModuleDict``, optimised
and checkpointed by the training method). :meth:`DualBatchNorm.use_other` swaps the two sets of layers
in place for the duration of a forward pass and swaps them back: the swap exchanges module objects,
so the set of parameters (what the optimiser and data parallelism hold) never changes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["DualBatchNorm", "DualBNNetwork"]


def _key(path: str) -> str:
    """A ``ModuleDict`` key for a dotted module path."""
    return path.replace(".", "__")


class DualBatchNorm:
    """The second BatchNorm branch of ``encoder`` (see the module docstring).

    Args:
        encoder: A module with BatchNorm layers; they stay the evaluated branch.

    Raises:
        ValueError: If ``encoder`` has no BatchNorm layer.
    """

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.paths = [
            name
            for name, module in encoder.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]
        if not self.paths:
            raise ValueError("dual BatchNorm needs an encoder with BatchNorm layers; found none")
        self.other = nn.ModuleDict(
            {_key(p): copy.deepcopy(encoder.get_submodule(p)) for p in self.paths}
        )
        self._swapped = False

    def _swap(self) -> None:
        for path in self.paths:
            parent_path, _, name = path.rpartition(".")
            parent = self.encoder.get_submodule(parent_path) if parent_path else self.encoder
            in_encoder = getattr(parent, name)
            setattr(parent, name, self.other[_key(path)])
            self.other[_key(path)] = in_encoder
        self._swapped = not self._swapped

    @contextmanager
    def use_other(self) -> Iterator[None]:
        """Run the encoder with the other branch inside the block (swapped back on exit).

        Raises:
            RuntimeError: If already inside such a block.
        """
        if self._swapped:
            raise RuntimeError("dual BatchNorm: the other branch is already in use")
        self._swap()
        try:
            yield
        finally:
            self._swap()


class DualBNNetwork(nn.Module):
    """The optimised network of a dual-BN method: the encoder plus the other branch's layers.

    Its forward is the encoder's (with whichever branch is in place).
    """

    def __init__(self, encoder: nn.Module, other: nn.ModuleDict) -> None:
        super().__init__()
        self.encoder = encoder
        self.other_bn = other

    def forward(self, x):  # type: ignore[no-untyped-def]
        """The encoder's output."""
        return self.encoder(x)
