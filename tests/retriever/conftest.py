"""Retriever tests run torch on one thread: the tiny model gains nothing from two, and when other
test processes share the two cores, two spinning threads per process make each step several times slower."""
from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
