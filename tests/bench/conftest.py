"""Shared fixtures of the bench's smoke tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: the tests share 2 cores with another pytest worker, and OpenMP threads that find their
    cores taken make every tiny operator wait for a time slice (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
