import pytest
import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.models import HEADS, LinearHead, ProjectionHead


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_projection_head_structure(num_layers: int) -> None:
    head = ProjectionHead(16, 32, 8, num_layers=num_layers)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == num_layers and len(bns) == num_layers - 1
    out = head(torch.randn(4, 16))
    assert out.shape == (4, 8)
    out.sum().backward()


def test_linear_head_is_linear() -> None:
    head = LinearHead(16, 10)
    x = torch.randn(4, 16)
    torch.testing.assert_close(head(x), x @ head.fc.weight.T + head.fc.bias)


def test_invalid_dims() -> None:
    with pytest.raises(ConfigError):
        ProjectionHead(16, 32, 8, num_layers=0)
    with pytest.raises(ConfigError):
        LinearHead(16, 0)


def test_head_registry() -> None:
    assert HEADS.names() == ["classifier", "none", "projector"]
    proj = HEADS.get("projector")(16, num_classes=10, proj_hidden_dim=32, proj_dim=8)
    clf = HEADS.get("classifier")(16, num_classes=10, proj_hidden_dim=32, proj_dim=8)
    assert isinstance(proj, ProjectionHead) and isinstance(clf, LinearHead)
    none = HEADS.get("none")(16, num_classes=10, proj_hidden_dim=32, proj_dim=8)
    assert list(none.parameters()) == [] and none(torch.ones(2, 16)).shape == (2, 16)
