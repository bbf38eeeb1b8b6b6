"""The room's system-call filter: an allowlist compiled to seccomp BPF by libseccomp, which bwrap loads (``--seccomp FD``).

The list is modelled on Docker's default profile for a container without capabilities, and narrower: what a
Python interpreter, pip, IPython and a Jupyter kernel use, and nothing that opens kernel code a data
scientist's program has no need for. Every system call not named here fails with EPERM (fail closed: one the
kernel adds tomorrow is refused until it is listed), and so does every system call of another ABI (32-bit
x86, x32), which libseccomp's filter kills outright.

Refused, unlike Docker's default where noted: namespaces of any kind (``unshare``, ``setns``, and ``clone``
with a CLONE_NEW* flag, so no nested user namespace and its capabilities), ``clone3`` (its flags sit in memory
the filter cannot read: it answers ENOSYS, and glibc falls back to ``clone``, as under Docker), mounting,
``ptrace`` and reading or writing another process's memory (Docker allows them), ``keyctl``, ``bpf``,
``perf_event_open``, io_uring (Docker allows it), ``userfaultfd``, ``kexec``, loading modules, ``modify_ldt``,
and sockets other than Unix, IPv4, IPv6 and netlink (the room has no network anyway; the families left are what
Python's standard library and ZeroMQ open on loopback).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from saferoom.errors import RoomError

# Namespaces a clone may not make: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (as Docker's mask).
CLONE_NAMESPACES = 0x7E020000
# Socket families a room may open: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (glibc's getaddrinfo asks netlink).
FAMILIES = (1, 2, 10, 16)
# personality(2) values a program may set: Linux, 32-bit Linux, UNAME26 of either, and the query 0xffffffff.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ALLOWED = (
    # files and folders
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat",
    "fstatfs", "fsync", "ftruncate", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown", "lgetxattr", "link", "linkat", "listxattr",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "mkdir", "mkdirat", "mknod", "mknodat",
    "name_to_handle_at", "newfstatat", "open", "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "removexattr", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "splice", "stat", "statfs", "statx", "symlink",
    "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "umask", "unlink", "unlinkat", "utime",
    "utimensat", "utimes", "vmsplice", "write", "writev",
    # waiting on many files
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2",
    "pipe", "pipe2", "poll", "ppoll", "pselect6", "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit", "ioctl",
    # memory
    "brk", "madvise", "membarrier", "memfd_create", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mprotect",
    "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "remap_file_pages",
    # processes, threads, signals
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex", "futex_waitv",
    "get_robust_list", "get_thread_area", "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getitimer",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getresgid", "getresuid", "getrlimit", "getrusage",
    "getsid", "gettid", "getuid", "ioprio_get", "ioprio_set", "kill", "pause", "pidfd_open", "pidfd_send_signal", "prctl",
    "prlimit64", "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsuid", "setgid",
    "setgroups", "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
    "setrlimit", "setsid", "setuid", "sigaltstack", "tgkill", "tkill", "vfork", "wait4", "waitid",
    # System V and POSIX IPC (multiprocessing's semaphores), in the room's own IPC namespace
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "msgctl", "msgget",
    "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop", "shmat", "shmctl", "shmdt", "shmget",
    # sockets (socket itself is allowed per family, below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recvfrom",
    "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socketpair",
    # time, randomness, the system's name
    "alarm", "clock_getres", "clock_gettime", "clock_nanosleep", "getrandom", "gettimeofday", "nanosleep",
    "sysinfo", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "times",
    "uname",
    # a program may narrow itself further
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "seccomp",
)


def room_filter() -> int:
    """A file descriptor (a memfd at offset 0) holding the room's filter as BPF, for ``bwrap --seccomp FD``.

    Raises RoomError, saying how to fix it, when libseccomp cannot be loaded: no room starts unfiltered.
    """
    filter_ = _compiled()
    fd = os.memfd_create("saferoom-seccomp", 0)  # inheritable by bwrap only through pass_fds
    try:
        filter_.export_bpf(_Fileno(fd))
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        raise RoomError(f"the room's system-call filter could not be written: {exc}") from None
    return fd


def problem() -> str | None:
    """Why the filter cannot be built on this host, with the fix; None when it can."""
    try:
        _compiled()
    except RoomError as exc:
        return str(exc)
    return None


class _Fileno:
    """What libseccomp's binding writes to: anything with ``fileno()``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def _compiled() -> Any:  # pyseccomp's SyscallFilter carries no types
    pyseccomp = _library()
    filter_ = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))
    for name in ALLOWED:
        _allow(filter_, pyseccomp.ALLOW, name)
    _allow(filter_, pyseccomp.ALLOW, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_NAMESPACES, 0))
    _allow(filter_, pyseccomp.ERRNO(errno.ENOSYS), "clone3")  # glibc then uses clone, whose flags are checked
    for family in FAMILIES:
        _allow(filter_, pyseccomp.ALLOW, "socket", pyseccomp.Arg(0, pyseccomp.EQ, family))
    for persona in PERSONALITIES:
        _allow(filter_, pyseccomp.ALLOW, "personality", pyseccomp.Arg(0, pyseccomp.EQ, persona))
    return filter_


def _allow(filter_: Any, action: int, name: str, *args: object) -> None:
    """Add one rule; a name this architecture lacks (libseccomp does not know it here) is left out, so refused."""
    try:
        filter_.add_rule(action, name, *args)
    except (OSError, ValueError, RuntimeError):
        pass


def _library() -> Any:
    try:
        import pyseccomp
    except ImportError:
        raise RoomError("the room's system-call filter needs the pyseccomp package: pip install pyseccomp "
                        "(it comes with saferoom; reinstall saferoom)") from None
    except (RuntimeError, OSError):
        raise RoomError("the room's system-call filter needs libseccomp: apt-get install libseccomp2 "
                        "(dnf install libseccomp)") from None
    return pyseccomp
