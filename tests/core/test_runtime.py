"""gradcam.runtime: the allocator settings the CLI applies to its own process."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest

from gradcam import runtime
from gradcam.cli import main


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer
        outer = self

        class Mallopt:
            argtypes = restype = None

            def __call__(self, param: int, value: int) -> int:
                outer.calls.append((param, value))
                return outer.answer

        self.mallopt = Mallopt()


@pytest.fixture
def linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("GRADCAM_KEEP_FREED_MEMORY", raising=False)


def test_keep_freed_memory_sets_both_glibc_thresholds(monkeypatch, linux) -> None:
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    assert runtime.keep_freed_memory() is True
    assert fake.calls == [(-3, 256 * 2**20), (-1, 512 * 2**20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_keep_freed_memory_reports_refusal_and_missing_libc(monkeypatch, linux) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc(answer=0))
    assert runtime.keep_freed_memory() is False

    def no_libc(name):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert runtime.keep_freed_memory() is False


def test_opt_out_and_other_platforms_do_nothing(monkeypatch, linux) -> None:
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.setenv("GRADCAM_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv("GRADCAM_KEEP_FREED_MEMORY")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False
    assert fake.calls == []


def test_the_cli_applies_it_to_its_own_process(monkeypatch, capsys) -> None:
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["models"]) == 0
    assert calls == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_real_glibc_accepts_the_settings() -> None:
    assert runtime.keep_freed_memory() is True
