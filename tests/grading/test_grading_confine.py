"""Each protection of `confine.py` holding on this machine kind (Landlock ABI >= 4, seccomp): a
write outside the scratch folder, a read of the grader's files and of /proc/<parent>, a TCP
connect, a fork loop, a subprocess, a signal to the parent. Each attack runs in a fresh child
interpreter that confines itself first, as the grading harness does."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from bncourse.grading import confine

HAVE_LANDLOCK = confine.landlock_abi() >= 4
HAVE_SECCOMP = confine.seccomp_available()

ATTACKER = r'''
import json, os, socket, sys, sysconfig
sys.path.insert(0, {confine_dir!r})
import confine
roots = [sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], "/usr/lib", "/lib",
         "/lib64", "/proc/self"] + [p for p in sys.path if p and "site-packages" in p]
done = confine.confine(read_roots=roots, write_roots=[{scratch!r}], hidden=[{hidden!r}],
                       visible=[{visible!r}], memory_mb=2048, cpu_seconds=60,
                       file_bytes=2**20, processes=4, landlock={landlock}, seccomp={seccomp})
result = {{"applied": dict(done)}}
def attempt(name, action):
    try:
        action()
        result[name] = "allowed"
    except OSError as exc:
        result[name] = type(exc).__name__
attempt("write_outside", lambda: open({outside!r}, "w").write("x"))
attempt("write_scratch", lambda: open(os.path.join({scratch!r}, "ok"), "w").write("x"))
attempt("read_hidden", lambda: open({hidden_file!r}).read())
attempt("read_visible", lambda: open({visible!r}).read())
attempt("read_parent_environ", lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read())
attempt("read_parent_cmdline", lambda: open(f"/proc/{{os.getppid()}}/cmdline", "rb").read())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
def fork_loop():
    for _ in range(50):
        if os.fork() == 0:
            os._exit(0)
attempt("fork", fork_loop)
attempt("subprocess", lambda: __import__("subprocess").run(["true"]))
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
import threading
box = []
t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
result["thread"] = "allowed" if box else "denied"
print(json.dumps(result))
'''


def run_attacker(tmp_path, landlock=True, seccomp=True):
    scratch, hidden = tmp_path / "scratch", tmp_path / "grader"
    scratch.mkdir()
    hidden.mkdir()
    (hidden / "key.pem").write_text("secret")
    (hidden / "public.txt").write_text("public")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    code = ATTACKER.format(confine_dir=os.path.dirname(confine.__file__), scratch=str(scratch),
                           hidden=str(hidden), visible=str(hidden / "public.txt"),
                           hidden_file=str(hidden / "key.pem"),
                           outside=str(tmp_path / "outside.txt"), port=server.getsockname()[1],
                           landlock=landlock, seccomp=seccomp)
    env = {"PATH": os.environ.get("PATH", ""), "SECRET_OF_THE_PARENT": "s3cret"}
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    try:
        connection, _ = server.accept()
        connection.close()
        accepted = True
    except (socket.timeout, OSError):
        accepted = False
    server.close()
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), accepted


def test_active_protections_names_every_mechanism():
    found = confine.active_protections()
    assert set(found) == {"platform", "landlock", "landlock_network", "landlock_scopes",
                          "seccomp", "rlimits", "rlimit_nproc_binds"}
    assert all(isinstance(v, (bool, str)) for v in found.values())
    assert (found["landlock"] is False) == (confine.landlock_abi() == 0)


@pytest.mark.skipif(not (HAVE_LANDLOCK and HAVE_SECCOMP), reason="needs Landlock ABI >= 4 and seccomp")
def test_every_protection_holds_on_this_machine_kind(tmp_path):
    result, accepted = run_attacker(tmp_path)
    assert result["applied"]["landlock"].startswith("ABI ") and result["applied"]["seccomp"]
    expected = {"write_outside": "PermissionError", "write_scratch": "allowed",
                "read_hidden": "PermissionError", "read_visible": "allowed",
                "read_parent_environ": "PermissionError",
                "read_parent_cmdline": "PermissionError", "connect": "PermissionError",
                "fork": "PermissionError", "subprocess": "PermissionError",
                "signal_parent": "PermissionError", "thread": "allowed"}
    assert {k: result[k] for k in expected} == expected
    assert not accepted  # the listening socket saw no connection
    assert not (tmp_path / "outside.txt").exists()


def test_without_landlock_and_seccomp_it_still_runs_and_says_so(tmp_path):
    result, _ = run_attacker(tmp_path, landlock=False, seccomp=False)
    assert result["applied"]["landlock"] is False and result["applied"]["seccomp"] is False
    assert "RLIMIT_AS" in result["applied"]["rlimits"]
    assert result["write_scratch"] == "allowed" and result["thread"] == "allowed"


@pytest.mark.parametrize("kwargs, error, text", [
    ({"memory_mb": -1}, ValueError, "memory_mb"),
    ({"cpu_seconds": 0}, ValueError, "cpu_seconds"),
    ({"file_bytes": "big"}, TypeError, "file_bytes"),
    ({"processes": 1.5}, TypeError, "processes"),
    ({"read_roots": "/usr"}, TypeError, "read_roots"),
    ({"write_roots": [3]}, TypeError, "write_roots"),
])
def test_confine_rejects_bad_arguments_by_name(kwargs, error, text):
    with pytest.raises(error, match=text):
        confine.confine(**kwargs)


def test_seccomp_program_is_whole_instructions():
    if not HAVE_SECCOMP:
        pytest.skip("no seccomp here")
    program = confine._seccomp_program()
    assert len(program) % 8 == 0 and len(program) // 8 < 64
