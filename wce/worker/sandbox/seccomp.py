"""seccomp: a classic BPF filter built here (no libseccomp), installed with prctl(PR_SET_SECCOMP).

The program reads struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]} and answers EPERM to
the system calls a worker never makes and a compromised one would want (`DENIED`), ENOSYS to
clone3 (its flags are behind a pointer no filter can read: libc then falls back to clone, whose
flags are checked), and EPERM to any call of another ABI (x32 on x86-64, 32-bit compat). A deny
list, not an allow list: the service manager's filter (deploy/wce.service) is the allow list.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from .libc import PR_SET_SECCOMP, check, prctl

SECCOMP_MODE_FILTER = 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK = 1, 1, 0xF
CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000  # NEWNS..NEWNET
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
X32_SYSCALL_BIT = 0x40000000

DENIED = (
    "execve", "execveat",  # no program but this one
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",  # other processes' memory and files
    "connect",  # a worker only accepts, on the socket the fork server bound
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",  # its operations never pass this filter
    "chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat",  # by path: Landlock has no right for them
    "truncate",  # by path (Landlock has a right for it from ABI 3 only); ftruncate is on an open file
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "open_by_handle_at",
)
CHECKED = ("socket", "socketpair", "clone", "clone3", "ioctl")  # by their arguments

# (AUDIT_ARCH_*, {name: number}) from the kernel's asm/unistd_64.h (x86-64) and asm-generic/unistd.h (arm64)
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435, "ioctl": 16,
        "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "pidfd_getfd": 438, "kcmp": 312, "connect": 42, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "unshare": 272, "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "chmod": 90, "fchmodat": 268,
        "fchmodat2": 452, "chown": 92, "lchown": 94, "fchownat": 260, "truncate": 76, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
        "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179, "open_by_handle_at": 304,
    }),
    "aarch64": (0xC00000B7, {  # no chmod, chown, lchown: only their *at forms exist there
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435, "ioctl": 29,
        "execve": 221, "execveat": 281, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "pidfd_getfd": 438, "kcmp": 272, "connect": 203, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "unshare": 97, "setns": 268, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "fchmodat": 53,
        "fchmodat2": 452, "fchownat": 54, "truncate": 45, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "reboot": 142, "swapon": 224,
        "swapoff": 225, "acct": 89, "quotactl": 60, "open_by_handle_at": 265,
    }),
}

_LD_W_ABS, _JEQ, _JGE, _JSET, _AND, _RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
Insn = tuple[int, int, str | None, str | None]  # (code, k, label if true, label if false); None: the next one


def assemble(program: list[Insn | str]) -> bytes:
    """struct sock_filter[] from instructions and label names (a label names the next instruction)."""
    labels: dict[str, int] = {}
    code: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = bytearray()
    for i, (op, k, jt, jf) in enumerate(code):
        offsets = [labels[j] - i - 1 if j else 0 for j in (jt, jf)]
        if not all(0 <= o <= 255 for o in offsets):
            raise ValueError(f"jump out of reach at instruction {i}")
        out += struct.pack("=HBBI", op, offsets[0], offsets[1], k)
    return bytes(out)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture (or `machine`), or None if there is no table for it."""
    name = machine or platform.machine()
    arch = ARCHES.get(name)
    if arch is None:
        return None
    audit_arch, nr = arch

    def arg(i: int) -> Insn:  # load the low 32 bits of args[i] (little-endian)
        return (_LD_W_ABS, 16 + 8 * i, None, None)

    p: list[Insn | str] = [(_LD_W_ABS, 4, None, None), (_JEQ, audit_arch, None, "deny"), (_LD_W_ABS, 0, None, None)]
    if name == "x86_64":
        p.append((_JGE, X32_SYSCALL_BIT, "deny", None))
    p += [(_JEQ, nr["socket"], "socket", None), (_JEQ, nr["socketpair"], "socketpair", None),
          (_JEQ, nr["clone"], "clone", None), (_JEQ, nr["clone3"], "enosys", None), (_JEQ, nr["ioctl"], "ioctl", None)]
    p += [(_JEQ, nr[name], "deny", None) for name in DENIED if name in nr]
    p += [(_RET, RET_ALLOW, None, None),
          "socket", arg(0), (_JEQ, AF_UNIX, None, "deny"),
          arg(1), (_AND, SOCK_TYPE_MASK, None, None), (_JEQ, SOCK_STREAM, "allow", "deny"),
          "socketpair", arg(0), (_JEQ, AF_UNIX, "allow", "deny"),
          "clone", arg(0), (_JSET, CLONE_NEW, "deny", "allow"),
          "ioctl", arg(1), (_JEQ, TIOCSTI, "deny", None), (_JEQ, TIOCLINUX, "deny", "allow"),
          "allow", (_RET, RET_ALLOW, None, None),
          "deny", (_RET, RET_ERRNO | errno.EPERM, None, None),
          "enosys", (_RET, RET_ERRNO | errno.ENOSYS, None, None)]
    return assemble(p)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(prog: bytes) -> None:
    """Install the filter on this thread, for good (call it while the process has only one thread;
    threads and children made later inherit it). Needs NO_NEW_PRIVS (libc.no_new_privs)."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    u = ctypes.c_ulong
    check(prctl(PR_SET_SECCOMP, u(SECCOMP_MODE_FILTER), ctypes.byref(fprog), u(0), u(0)), "prctl(PR_SET_SECCOMP)")
