"""Byte counters: `CounterBlock` and `count_bytes`. Pure-Python twin of ``_core.pyx`` (see ``__init__``)."""

from __future__ import annotations

import operator

_U64_MASK = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


def count_bytes(data: bytes | bytearray | memoryview) -> int:
    """Number of bytes in ``data`` (a memoryview counts its nbytes, not its items)."""
    if type(data) is bytes:
        return len(data)
    return memoryview(data).nbytes


def _address(view: memoryview) -> int:
    # ctypes is the only pure-Python way to see where a buffer lives; only needed once,
    # at construction, to refuse memory the compiled twin could not update atomically.
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class CounterBlock:
    """``size`` unsigned 64-bit counters in one flat buffer (see docs/speedups.md).

    Counter ``i`` is the native-endian uint64 at byte offset ``8 * i`` of the buffer,
    which must be writable, C-contiguous, 8-byte aligned and at least ``8 * size``
    bytes. Updates here are plain read-modify-write through a memoryview (the compiled
    twin uses atomic adds); values wrap modulo 2**64 in both.
    """

    __slots__ = ("_size", "_view")

    def __init__(self, size: int, buffer: object | None = None) -> None:
        size = operator.index(size)
        if size < 0:
            raise ValueError("size must be >= 0")
        if buffer is None:
            buffer = bytearray(8 * size)
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly or not view.c_contiguous:
            view.release()
            raise TypeError("buffer must be writable and C-contiguous")
        view = view.cast("B")
        if view.nbytes < 8 * size:
            raise ValueError(f"buffer holds {view.nbytes} bytes, {8 * size} needed")
        if view.nbytes and _address(view) % 8:
            raise ValueError("buffer must be 8-byte aligned")
        self._size = size
        self._view = view[: 8 * size].cast("Q")

    @property
    def size(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return 8 * self._size

    def add(self, index: int, value: int) -> None:
        if not 0 <= index < self._size:
            raise IndexError("counter index out of range")
        if value < 0:
            raise ValueError("value must be >= 0")
        if value > _I64_MAX:
            raise OverflowError("value too large")
        view = self._view
        view[index] = (view[index] + value) & _U64_MASK

    def get(self, index: int) -> int:
        if index < 0:
            raise IndexError("counter index out of range")
        return self._view[index]

    def set(self, index: int, value: int) -> None:
        if not 0 <= index < self._size:
            raise IndexError("counter index out of range")
        value = operator.index(value)
        if value < 0:
            raise ValueError("value must be >= 0")
        if value > _U64_MASK:
            raise OverflowError("value too large")
        self._view[index] = value

    def snapshot(self) -> list[int]:
        return self._view.tolist()

    def reset(self) -> None:
        self._view[:] = memoryview(bytes(8 * self._size)).cast("Q")
