"""Reading many datagrams per call with recvmmsg(2), through ctypes, while holding the GIL.

Why: every ``socket.recv`` releases the GIL around its system call. When upload threads are
busy, the receiver then waits for the GIL again after each datagram, up to the switch
interval, and the kernel buffer overflows (the convoy effect; docs/benchmarks.md). A
``ctypes.PyDLL`` function keeps the GIL during the call, so one non-blocking ``recvmmsg``
takes up to ``slots`` datagrams for one GIL hand-over. Waiting for data still releases the
GIL (``poll``). Linux only; ``open_reader`` returns None elsewhere and the receiver falls back to
one ``recv`` per datagram.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import sys

MSG_DONTWAIT = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class MultiReader:
    """Non-blocking reads of up to ``slots`` datagrams of up to ``size`` bytes from ``fd``."""

    def __init__(self, fd: int, recvmmsg: ctypes._CFuncPtr, slots: int = 32,
                 size: int = 65536) -> None:
        self.fd = fd
        self.slots = slots
        self.size = size
        self._recvmmsg = recvmmsg
        # Anonymous memory: a page becomes resident only once a datagram is written to it
        # (a bytearray is zero-filled at once: 2 MB resident for 32 slots of 64 KB).
        self._buffer = mmap.mmap(-1, slots * size)
        self._view = memoryview(self._buffer)
        base = ctypes.addressof((ctypes.c_char * len(self._buffer)).from_buffer(self._buffer))
        self._iovecs = (_Iovec * slots)()
        self._msgs = (_Mmsghdr * slots)()
        for i in range(slots):
            self._iovecs[i].iov_base = base + i * size
            self._iovecs[i].iov_len = size
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iovecs[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        # Each entry's msg_len, read as a C unsigned int through a memoryview (much cheaper
        # than a ctypes field access per datagram).
        stride = ctypes.sizeof(_Mmsghdr)
        offset = _Mmsghdr.msg_len.offset
        lengths = memoryview(self._msgs).cast("B").cast("I")
        self._length_of = [(offset + i * stride) // 4 for i in range(slots)]
        self._lengths = lengths
        self._starts = [i * size for i in range(slots)]

    def read(self) -> list[bytes]:
        """The datagrams waiting now (at most ``slots``); [] when there are none."""
        count = self._recvmmsg(self.fd, self._msgs, self.slots, MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")
        view, lengths = self._view, self._lengths
        return [view[start:start + lengths[at]].tobytes()
                for start, at in zip(self._starts[:count], self._length_of, strict=False)]


def open_reader(fd: int, slots: int = 32) -> MultiReader | None:
    """A MultiReader for ``fd``, or None where recvmmsg cannot be had this way."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    return MultiReader(fd, recvmmsg, slots)
