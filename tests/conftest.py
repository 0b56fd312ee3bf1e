"""Shared pytest options: the slow tier is opt-in with --runslow; gpu tests need CUDA."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run @slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """The offline CIFAR-10 copy beside the checkout (or $CSLROBUST_CIFAR10_JPEG); skip if absent."""
    env = os.environ.get("CSLROBUST_CIFAR10_JPEG")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not path.is_file():
        pytest.skip(f"offline CIFAR-10 archive not found at {path}")
    return path


def permissions_ignored() -> bool:
    """Whether this process writes into a read-only folder anyway (root with CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ro"
        folder.mkdir(mode=0o555)
        try:
            (folder / "probe").touch()
        except PermissionError:
            return False
        finally:
            folder.chmod(0o755)
        return True


def one_line_error(args: list[str]) -> str:
    """Invoke the CLI, check exit 2 with exactly one line on stderr and no traceback; the line."""
    from typer.testing import CliRunner

    from cslrobust.cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]
