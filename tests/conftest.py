"""Shared fixtures. Tests run on the CPU, single-threaded where timing does not matter."""

from __future__ import annotations

import pytest
import torch

from oracles import distances, linear_model, linear_multiclass

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_test():
    from crossholder import data

    return data.tensors("mnist", "test")


@pytest.fixture(scope="module")
def linear_case():
    lin = linear_model()
    g = torch.Generator().manual_seed(1)
    x = 0.45 + 0.1 * torch.rand(64, 20, generator=g, dtype=F64)
    with torch.no_grad():
        y = lin(x).argmax(1)
    dist = distances(lin, x)
    assert float(dist.max()) < 0.4, "the box must not bind for the closed form to hold"
    return lin, x, y, dist


# ---------------------------------------------------------------- the strongest protocol (pyautoattack adapters)
@pytest.fixture(scope="module")
def multiclass():
    pytest.importorskip("pyautoattack")
    return linear_multiclass()


@pytest.fixture
def git_status():
    """A callable: this checkout's ``git status --porcelain --untracked-files=all`` (skips outside a checkout)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def status() -> str:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"not a git checkout: {out.stderr.strip()}")
        return out.stdout
    return status
