"""The C side of recvmmsg and sendmmsg: their structures as ctypes declares them, their calls as cffi does.

Apart from mmsg.py because mmsg is compiled with mypyc (docs/performance.md, "Compiled
modules"), which does not compile classes derived from ctypes.Structure (its C refers to
the _ctypes module without importing it); this module stays Python.

The vectors are laid out with the ctypes structures below in every build. The two calls
go through a small cffi extension where the build made one (FFI_MODULE, from
`ffibuilder()`; setup.py), else through ctypes: a ctypes call without argtypes costs about
2,700 instructions in libffi and argument conversion, the cffi one about 1,100, and a
one-query hit makes two (docs/performance.md, "The kernel calls through cffi").
"""

from __future__ import annotations

import ctypes
from typing import Any

FFI_MODULE = "nodecache._mmsgffi"

# What the cffi extension exposes. The vectors go as `void *`: their layout is the ctypes one
# below, and C converts the pointer to the header's `struct mmsghdr *` (glibc and musl declare
# the flags with different signedness; the compiler reconciles the call with either).
FFI_CDEF = """
int recvmmsg(int fd, void *vector, unsigned int count, int flags, void *timeout);
int sendmmsg(int fd, void *vector, unsigned int count, int flags);
"""
FFI_SOURCE = """
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <sys/socket.h>
"""


def ffibuilder() -> Any:
    """The cffi builder of FFI_MODULE (setup.py compiles it; needs cffi and a C compiler)."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(FFI_CDEF)
    ffi.set_source(FFI_MODULE, FFI_SOURCE)
    return ffi


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]
