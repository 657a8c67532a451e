"""Evaluation tests run with one torch thread (on a shared 2-core machine two intra-op threads spin-wait
for each other and make the many small forward passes of the faithfulness metrics several times slower),
and tests marked ``slow`` run only when asked for (``pytest -m slow``: see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield
