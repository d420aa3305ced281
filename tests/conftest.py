"""Shared fixtures. Tests run on the CPU, single-threaded where timing does not matter."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_test():
    from crossholder import data

    return data.tensors("mnist", "test")
