"""The C structures recvmmsg and sendmmsg read (struct iovec, msghdr, mmsghdr), as ctypes declares them.

Apart from mmsg.py because mmsg is compiled with mypyc (docs/performance.md, "Compiled
modules"), which does not compile classes derived from ctypes.Structure (its C refers to
the _ctypes module without importing it); this module stays Python.
"""

from __future__ import annotations

import ctypes


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
