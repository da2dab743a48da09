"""Confine the process that runs a learner's code: Landlock, seccomp and rlimits (Linux).

`confine(...)` is called by the child harness (`drivers/_child.py`) before it imports torch or
runs a cell, so every thread the process ever has is confined. It applies, each where available:

- **Landlock** (Salaün, Linux 5.13+; ABI 4+ for TCP rules, 6+ for scopes): reads only below the
  given roots (the Python stdlib, site-packages, system libraries), writes only in the scratch
  folder, no TCP connect or bind, no signals to and no abstract sockets of processes outside.
  Nothing outside the roots can be read: not the submitted notebook, not another learner's
  folder, not `/proc/<grader>/environ`, not a key file.
- **seccomp** (a classic BPF filter): no new process (`fork`, `vfork`, `clone` without
  `CLONE_THREAD`, `clone3`), no `execve`, no `socket()` at all, no `ptrace` or
  `process_vm_readv/writev`. Threads still start. This also holds for root, whom
  `RLIMIT_NPROC` does not bind (CI runs as root).
- **rlimits**: address space, CPU seconds, file size, no core dumps, `RLIMIT_NPROC`.

`active_protections()` says which mechanisms this machine offers (`bncourse doctor` and the
grade report show it); a missing one is reported, never fatal: grading still works.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

__all__ = ["landlock_abi", "seccomp_available", "active_protections", "confine",
           "ConfineResult"]

# --- Landlock ------------------------------------------------------------------------------
_SYS = {"x86_64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445,
                   "landlock_restrict_self": 446, "seccomp": 317},
        "aarch64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445,
                    "landlock_restrict_self": 446, "seccomp": 277}}
_ARCH = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")

_FS = {"execute": 1 << 0, "write_file": 1 << 1, "read_file": 1 << 2, "read_dir": 1 << 3,
       "remove_dir": 1 << 4, "remove_file": 1 << 5, "make_char": 1 << 6, "make_dir": 1 << 7,
       "make_reg": 1 << 8, "make_sock": 1 << 9, "make_fifo": 1 << 10, "make_block": 1 << 11,
       "make_sym": 1 << 12, "refer": 1 << 13, "truncate": 1 << 14, "ioctl_dev": 1 << 15}
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
              5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_READ = _FS["read_file"] | _FS["read_dir"] | _FS["execute"]
_READ_FILE = _FS["read_file"] | _FS["execute"]
_PR_SET_NO_NEW_PRIVS = 38

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _syscall(name, *args):
    number = _SYS.get(_ARCH, {}).get(name)
    if number is None or not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, f"{name} is not available here")
    result = _lib().syscall(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: no Landlock)."""
    try:
        return int(_syscall("landlock_create_ruleset", None, ctypes.c_size_t(0),
                            ctypes.c_uint32(1)))  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _add_path(ruleset_fd, path, access, handled):
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not os.path.isdir(path):  # rights that only make sense on a directory
            access &= _FS["read_file"] | _FS["write_file"] | _FS["execute"] | _FS["truncate"] \
                | _FS["ioctl_dev"]
        rule = _PathBeneath(access & handled, fd)
        _syscall("landlock_add_rule", ctypes.c_int(ruleset_fd), ctypes.c_int(1),
                 ctypes.byref(rule), ctypes.c_uint32(0))
        return True
    finally:
        os.close(fd)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _read_rules(roots, hidden, visible):
    """(path, access) pairs granting read below `roots` but nothing below `hidden` paths,
    except the `visible` ones (files or folders inside a hidden one). Landlock only adds
    rights, so a root holding a hidden path is granted entry by entry around it."""
    rules = []

    def grant(path):
        inner = [h for h in hidden if _inside(h, path)]
        if not inner:
            rules.append((path, _READ))
            return
        if path in inner:  # hidden: names may be listed, only visible entries read
            rules.append((path, _FS["read_dir"]))
            for v in visible:
                if _inside(v, path) and v != path:
                    rules.append((v, _READ if os.path.isdir(v) else _READ_FILE))
            return
        rules.append((path, _FS["read_dir"]))
        try:
            entries = os.listdir(path)
        except OSError:
            return
        for entry in entries:
            grant(os.path.join(path, entry))

    for root in roots:
        root = os.path.realpath(root)
        if os.path.exists(root):
            grant(root)
    return rules


def _landlock(read_roots, write_roots, hidden, visible, abi):
    handled = _FS_BY_ABI.get(abi, (1 << 16) - 1)
    attr = _RulesetAttr(handled, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    fd = _syscall("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size),
                  ctypes.c_uint32(0))
    try:
        hidden = [os.path.realpath(h) for h in hidden]
        visible = [os.path.realpath(v) for v in visible]
        for path, access in _read_rules(read_roots, hidden, visible):
            _add_path(fd, path, access, handled)
        for path in hidden:  # names may be listed (the import system does), files not read
            _add_path(fd, path, _FS["read_dir"], handled)
        for path in visible:  # also when no read root holds them
            _add_path(fd, path, _READ if os.path.isdir(path) else _READ_FILE, handled)
        for path in write_roots:
            _add_path(fd, os.path.realpath(path), handled & ~_FS["execute"] | _READ, handled)
        for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
            _add_path(fd, device, _FS["read_file"] | _FS["write_file"], handled)
        _lib().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _syscall("landlock_restrict_self", ctypes.c_int(fd), ctypes.c_uint32(0))
    finally:
        os.close(fd)


# --- seccomp ---------------------------------------------------------------------------------
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_BLOCKED = {  # syscall numbers answered with EPERM (clone: only without CLONE_THREAD)
    "x86_64": {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "socket": 41,
               "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311},
    "aarch64": {"execve": 221, "execveat": 281, "socket": 198, "ptrace": 117,
                "process_vm_readv": 270, "process_vm_writev": 271},
}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_CLONE_THREAD = 0x00010000
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000


def seccomp_available() -> bool:
    return sys.platform.startswith("linux") and _ARCH in _AUDIT_ARCH


def _bpf(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def _seccomp_program() -> bytes:
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JSET|K, RET|K
    blocked = list(_BLOCKED[_ARCH].values())
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    prog = [_bpf(LD, 0, 0, 4),  # arch
            _bpf(JEQ, 1, 0, _AUDIT_ARCH[_ARCH]),
            _bpf(RET, 0, 0, eperm),  # another ABI (x32, ia32): refuse everything
            _bpf(LD, 0, 0, 0)]  # syscall number
    if _ARCH == "x86_64":  # x32 numbers carry bit 30
        prog += [_bpf(0x35, 0, 1, 0x40000000), _bpf(RET, 0, 0, eperm)]  # JGE
    prog += [_bpf(JEQ, 0, 1, _CLONE3), _bpf(RET, 0, 0, enosys)]  # glibc falls back to clone
    for number in blocked:
        prog += [_bpf(JEQ, 0, 1, number), _bpf(RET, 0, 0, eperm)]
    prog += [_bpf(JEQ, 0, 3, _CLONE[_ARCH]),
             _bpf(LD, 0, 0, 16),  # args[0] (flags), low 32 bits
             _bpf(JSET, 1, 0, _CLONE_THREAD),
             _bpf(RET, 0, 0, eperm),
             _bpf(RET, 0, 0, _RET_ALLOW)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp():
    program = _seccomp_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _lib().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, prog): every thread
    _syscall("seccomp", ctypes.c_uint(1), ctypes.c_uint(1), ctypes.byref(fprog))


# --- rlimits ---------------------------------------------------------------------------------

def _rlimits(memory_mb, cpu_seconds, file_bytes, processes):
    import resource

    applied = []

    def limit(name, soft):
        kind = getattr(resource, name, None)
        if kind is None or soft is None:
            return
        try:
            _, hard = resource.getrlimit(kind)
            soft = int(soft) if hard == resource.RLIM_INFINITY else min(int(soft), hard)
            resource.setrlimit(kind, (soft, soft))
            applied.append(name)
        except (ValueError, OSError):
            pass

    limit("RLIMIT_AS", memory_mb * 2**20 if memory_mb else None)
    limit("RLIMIT_CPU", cpu_seconds)
    limit("RLIMIT_FSIZE", file_bytes)
    limit("RLIMIT_CORE", 0)
    limit("RLIMIT_NPROC", processes)
    return applied


# --- the API ---------------------------------------------------------------------------------

class ConfineResult(dict):
    """Which protection is in force in this process: name -> True, False or a reason."""


def confine(*, read_roots=(), write_roots=(), hidden=(), visible=(), memory_mb=None,
            cpu_seconds=None, file_bytes=None, processes=None,
            landlock: bool = True, seccomp: bool = True) -> ConfineResult:
    """Confine the calling process for good (see the module docstring); never raises.

    read_roots: folders (or files) that may be read; hidden: paths below them that may not be
    (but for `visible` entries inside them); write_roots: the only folders written to.
    Returns what was applied, for the report. ValueError/TypeError for a bad argument (checked
    before anything is applied).
    """
    for name, value in (("memory_mb", memory_mb), ("cpu_seconds", cpu_seconds),
                        ("file_bytes", file_bytes), ("processes", processes)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"{name} must be a positive integer or None, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    for name, paths in (("read_roots", read_roots), ("write_roots", write_roots),
                        ("hidden", hidden), ("visible", visible)):
        if isinstance(paths, (str, bytes)) or not all(isinstance(p, (str, os.PathLike))
                                                      for p in paths):
            raise TypeError(f"{name} must be a list of paths, got {paths!r}")
    read_roots, write_roots = [os.fspath(p) for p in read_roots], [os.fspath(p) for p in write_roots]
    hidden, visible = [os.fspath(p) for p in hidden], [os.fspath(p) for p in visible]
    done = ConfineResult()
    applied = _rlimits(memory_mb, cpu_seconds, file_bytes, processes)
    done["rlimits"] = ", ".join(applied) if applied else False
    done["rlimit_nproc_binds"] = "RLIMIT_NPROC" in applied and os.geteuid() != 0
    abi = landlock_abi() if landlock else 0
    if abi:
        try:
            _landlock(read_roots, write_roots, hidden, visible, abi)
            done["landlock"] = f"ABI {abi}"
            done["landlock_network"] = abi >= 4
            done["landlock_scopes"] = abi >= 6
        except OSError as exc:
            done["landlock"] = f"failed: {exc}"
    else:
        done["landlock"] = False
    if seccomp and seccomp_available():
        try:
            _seccomp()
            done["seccomp"] = True
        except OSError as exc:
            done["seccomp"] = f"failed: {exc}"
    else:
        done["seccomp"] = False
    return done


def active_protections() -> dict:
    """What confinement this machine gives a learner's process, for `bncourse doctor` and the
    grade report: {"landlock": "ABI 7" | False, "landlock_network": bool, "landlock_scopes":
    bool, "seccomp": bool, "rlimits": True, "rlimit_nproc_binds": bool, "platform": str}."""
    abi = landlock_abi()
    return {"platform": f"{sys.platform} {_ARCH}",
            "landlock": f"ABI {abi}" if abi else False,
            "landlock_network": abi >= 4,
            "landlock_scopes": abi >= 6,
            "seccomp": seccomp_available(),
            "rlimits": sys.platform != "win32",
            "rlimit_nproc_binds": sys.platform != "win32" and os.geteuid() != 0}
