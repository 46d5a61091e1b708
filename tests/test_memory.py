"""`saedex index` asks glibc to keep freed memory; the call must take effect where glibc is."""

from __future__ import annotations

import platform

import pytest

from saedex.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc's")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True
