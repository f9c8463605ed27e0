"""CounterBlock and count_bytes, on both implementations."""

from __future__ import annotations

import mmap
import sys
from multiprocessing import shared_memory
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .helpers import FUZZ

U64 = (1 << 64) - 1


def test_count_bytes(speedups_impl: ModuleType) -> None:
    cb = speedups_impl.count_bytes
    assert cb(b"") == 0
    assert cb(b"hello") == 5
    assert cb(bytearray(b"abc")) == 3
    assert cb(memoryview(b"abcdef")[1:4]) == 3
    assert cb(memoryview(bytearray(16)).cast("Q")) == 16  # nbytes, not items
    assert cb(memoryview(b"abcdef")[::2]) == 3  # non-contiguous still counts
    with pytest.raises(TypeError):
        cb("text")
    with pytest.raises(TypeError):
        cb(5)


def test_own_memory_starts_zeroed(speedups_impl: ModuleType) -> None:
    block = speedups_impl.CounterBlock(4)
    assert (block.size, block.nbytes) == (4, 32)
    assert block.snapshot() == [0, 0, 0, 0]
    block.add(0, 5)
    block.add(0, 7)
    block.add(3, 1)
    assert block.get(0) == 12
    assert block.snapshot() == [12, 0, 0, 1]
    block.set(1, U64)
    assert block.get(1) == U64
    block.reset()
    assert block.snapshot() == [0, 0, 0, 0]


def test_add_wraps_modulo_2_64(speedups_impl: ModuleType) -> None:
    block = speedups_impl.CounterBlock(1)
    block.set(0, U64 - 1)
    block.add(0, 3)
    assert block.get(0) == 1


def test_shared_bytearray_seen_by_two_blocks(speedups_impl: ModuleType) -> None:
    buf = bytearray(8 * 3)
    a = speedups_impl.CounterBlock(3, buf)
    b = speedups_impl.CounterBlock(3, buf)
    a.add(1, 40)
    b.add(1, 2)
    assert a.get(1) == b.get(1) == 42
    # Layout: native-endian uint64 at byte offset 8 * i.
    assert int.from_bytes(buf[8:16], sys.byteorder) == 42
    assert memoryview(buf).cast("Q").tolist() == [0, 42, 0]
    b.reset()
    assert a.snapshot() == [0, 0, 0]


def test_larger_buffer_uses_prefix(speedups_impl: ModuleType) -> None:
    buf = bytearray(8 * 4 + 5)
    block = speedups_impl.CounterBlock(2, buf)
    assert block.nbytes == 16
    block.set(1, 9)
    assert buf[8:16] == (9).to_bytes(8, sys.byteorder)
    buf[20] = 1
    block.reset()  # only its own counters
    assert buf[:16] == bytes(16)
    assert buf[20] == 1


def test_shared_memory_and_mmap(speedups_impl: ModuleType) -> None:
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        a = speedups_impl.CounterBlock(8, shm.buf)
        other = shared_memory.SharedMemory(name=shm.name)
        try:
            b = speedups_impl.CounterBlock(8, other.buf)
            a.add(7, 123)
            assert b.get(7) == 123
            del b
        finally:
            other.close()
        del a
    finally:
        shm.close()
        shm.unlink()
    m = mmap.mmap(-1, 16)
    block = speedups_impl.CounterBlock(2, m)
    block.add(1, 1)
    assert block.snapshot() == [0, 1]
    del block
    m.close()


def test_index_and_value_errors(speedups_impl: ModuleType) -> None:
    block = speedups_impl.CounterBlock(2)
    for bad in (2, 3, -1, -3, 1 << 40):
        with pytest.raises(IndexError):
            block.add(bad, 1)
        with pytest.raises(IndexError):
            block.get(bad)
        with pytest.raises(IndexError):
            block.set(bad, 1)
    with pytest.raises(ValueError):
        block.add(0, -1)
    with pytest.raises(ValueError):
        block.set(0, -1)
    with pytest.raises(OverflowError):
        block.set(0, 1 << 64)
    with pytest.raises(OverflowError):
        block.add(0, 1 << 63)
    with pytest.raises(TypeError):
        block.add(0, 1.5)
    with pytest.raises(TypeError):
        block.add("0", 1)
    assert block.snapshot() == [0, 0]
    empty = speedups_impl.CounterBlock(0)
    assert empty.snapshot() == []
    with pytest.raises(IndexError):
        empty.add(0, 1)


def test_bad_buffers(speedups_impl: ModuleType) -> None:
    CounterBlock = speedups_impl.CounterBlock
    with pytest.raises(ValueError):
        CounterBlock(-1)
    with pytest.raises(ValueError):
        CounterBlock(3, bytearray(16))  # too small
    with pytest.raises(TypeError):
        CounterBlock(1, b"\x00" * 8)  # read-only
    with pytest.raises(TypeError):
        CounterBlock(1, memoryview(bytearray(16))[::2])  # not contiguous
    with pytest.raises(ValueError):
        CounterBlock(1, memoryview(bytearray(24))[3:])  # not 8-byte aligned
    with pytest.raises(TypeError):
        CounterBlock(1, 5)


def test_buffer_is_pinned_while_in_use(speedups_impl: ModuleType) -> None:
    # A bytearray that grew under the block would leave it writing to freed memory.
    buf = bytearray(16)
    block = speedups_impl.CounterBlock(2, buf)
    with pytest.raises(BufferError):
        buf.extend(b"x" * 100)
    del block
    buf.extend(b"x")  # released with the block


@FUZZ
@given(ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, (1 << 63) - 1)), max_size=50))
def test_adds_match_a_model(speedups_impl: ModuleType, ops: list[tuple[int, int]]) -> None:
    block = speedups_impl.CounterBlock(5)
    model = [0] * 5
    for index, value in ops:
        block.add(index, value)
        model[index] = (model[index] + value) & U64
    assert block.snapshot() == model
