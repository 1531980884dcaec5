"""The few system calls the sandbox makes, through libc's syscall(2) and prctl(2) (ctypes: no
dependency, and nothing to build; the numbers are the kernel's own, from its uapi headers)."""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
syscall = libc.syscall
syscall.restype = ctypes.c_long
prctl = libc.prctl
prctl.restype = ctypes.c_int

PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 22, 38


def check(result: int, what: str) -> int:
    """result, or OSError with errno if the call failed (returned < 0)."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: what Landlock and seccomp ask of an unprivileged process (and no exec
    can then gain privileges, setuid or file capabilities)."""
    u = ctypes.c_ulong
    check(prctl(PR_SET_NO_NEW_PRIVS, u(1), u(0), u(0), u(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
