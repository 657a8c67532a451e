"""The method tests run single-threaded: on a shared 2-core machine two intra-op threads per test
process oversubscribe the cores and make small convolutions up to 100x slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
