"""Landlock (include/uapi/linux/landlock.h): restrict this process to a list of paths, with every
right the kernel's ABI version knows handled, so that all else is denied.

    ABI 1 (5.13) files; 2 (5.19) REFER; 3 (6.2) TRUNCATE; 4 (6.7) TCP bind/connect;
    5 (6.10) IOCTL_DEV; 6 (6.12) scopes: signals and abstract Unix sockets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from .libc import check, syscall

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # all a file's rule may hold
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = FS_READ_FILE | FS_READ_DIR
READ_WRITE_FILE = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE
SCRATCH = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_READ_DIR | FS_MAKE_REG | FS_REMOVE_FILE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> tuple[int, str]:
    """The kernel's Landlock ABI version (0 if none) and, if none, why."""
    version = syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if version >= 1:
        return int(version), ""
    err = ctypes.get_errno()
    why = {errno.ENOSYS: "this kernel has no Landlock",
           errno.EOPNOTSUPP: "Landlock is not enabled at boot (lsm=...,landlock)",
           errno.EPERM: "the landlock system calls are blocked (a seccomp filter, e.g. systemd's SystemCallFilter)"}
    return 0, f"{why.get(err, 'unavailable')}: {errno.errorcode.get(err, err)}"


def restrict(version: int, rules: list[tuple[str, int]]) -> None:
    """Restrict this process and its future children, for good, to `rules`: (path, rights) pairs,
    each right holding for the path and all beneath it (a rule holds the inode, opened now: a file
    made later under the same name is not covered). A path that does not exist is skipped. With
    ABI 4, no TCP bind or connect; with ABI 6, no signal to, or abstract Unix socket of, a process
    outside this sandbox."""
    fs = FS_BY_ABI.get(version, FS_BY_ABI[5])
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if version >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0)
    size = 8 if version < 4 else 16 if version < 6 else 24
    ruleset = check(syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= FS_FILE_RIGHTS
                rule = _PathBeneathAttr(rights & fs, fd)
                check(syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                              ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        check(syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
              "landlock_restrict_self")
    finally:
        os.close(ruleset)
