"""The `bncourse` command: doctor, lab, --version, and finding the course folder."""
import subprocess
import sys
from pathlib import Path

import pytest

import bncourse
from bncourse import cli


def test_doctor_passes_in_this_environment(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[FAIL]" not in out and "All good" in out
    for name in cli.RUNTIME_MODULES:
        assert name in out


def test_doctor_reports_a_missing_package(monkeypatch, capsys):
    monkeypatch.setattr(cli, "RUNTIME_MODULES", cli.RUNTIME_MODULES + ["no_such_module_bncourse"])
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] no_such_module_bncourse" in out and "pip install" in out
    assert "1 problem(s): no_such_module_bncourse" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bncourse {bncourse.__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "usage: bncourse" in out and "doctor" in out and "lab" in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "bncourse", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bncourse {bncourse.__version__}"


def _course_folder(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_find_course_root_from_the_folder_or_below(tmp_path):
    root = _course_folder(tmp_path / "course")
    deep = root / "notebooks" / "sub"
    deep.mkdir()
    assert cli.find_course_root(root) == root.resolve()
    assert cli.find_course_root(deep) == root.resolve()


def test_find_course_root_falls_back_to_the_checkout_or_none(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fake_package = tmp_path / "site-packages" / "bncourse"
    fake_package.mkdir(parents=True)
    monkeypatch.setattr(cli, "__file__", str(fake_package / "cli.py"))
    assert cli.find_course_root(elsewhere) is None  # installed from a wheel, outside a checkout
    checkout = _course_folder(tmp_path / "checkout")  # an editable install's source folder
    monkeypatch.setattr(cli, "__file__", str(checkout / "bncourse" / "cli.py"))
    assert cli.find_course_root(elsewhere) == checkout.resolve()


def _fake_lab(monkeypatch, root, as_root=False):
    monkeypatch.setattr(cli, "find_course_root", lambda start=None: root)
    monkeypatch.setattr(cli, "_is_root", lambda: as_root)
    calls = []

    def fake_call(cmd, cwd=None):
        calls.append((cmd, cwd))
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)  # never start JupyterLab in a test
    return calls


def test_lab_opens_the_course_root_at_lesson_00(monkeypatch, tmp_path, capsys):
    root = _course_folder(tmp_path / "course")
    (root / "notebooks" / "00_start_here.ipynb").write_text("{}")
    calls = _fake_lab(monkeypatch, root)
    assert cli.main(["lab", "--no-browser"]) == 0
    ((cmd, cwd),) = calls
    # Rooted at the course folder, so exercises/ is reachable from the Lab it opens.
    assert cmd == [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
                   str(root / "notebooks" / "00_start_here.ipynb"), "--no-browser"]
    assert cwd == root
    assert "Opening the course" in capsys.readouterr().out


def test_lab_passes_jupyter_options_through(monkeypatch, tmp_path):
    root = _course_folder(tmp_path / "course")
    calls = _fake_lab(monkeypatch, root)
    assert cli.main(["lab", "--port", "8899", "--ip=0.0.0.0"]) == 0
    ((cmd, _),) = calls
    assert cmd[-3:] == ["--port", "8899", "--ip=0.0.0.0"]
    assert "--allow-root" not in cmd


def test_lab_as_root_adds_allow_root_and_says_so(monkeypatch, tmp_path, capsys):
    root = _course_folder(tmp_path / "course")
    calls = _fake_lab(monkeypatch, root, as_root=True)
    assert cli.main(["lab"]) == 0
    ((cmd, _),) = calls
    assert cmd.count("--allow-root") == 1
    assert "running as root" in capsys.readouterr().out
    calls.clear()
    assert cli.main(["lab", "--allow-root"]) == 0  # given by the learner: not twice
    assert calls[0][0].count("--allow-root") == 1


def test_other_commands_still_reject_unknown_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["doctor", "--port", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --port 1" in capsys.readouterr().err


def test_lab_command_rejects_a_string_of_options(tmp_path):
    with pytest.raises(TypeError, match="jupyter_args must be a list"):
        cli.lab_command(tmp_path, "--port 1")


def test_doctor_shows_no_absolute_path(monkeypatch, tmp_path):
    root = _course_folder(tmp_path / "course")
    monkeypatch.chdir(root)
    detail = cli._describe_root(root)
    assert str(tmp_path) not in detail and detail.startswith("found: the current folder")
    monkeypatch.chdir(tmp_path)
    assert cli._describe_root(root).startswith("found: course/")


def test_lab_without_a_course_folder_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_course_root", lambda start=None: None)
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("must not start"))
    assert cli.main(["lab"]) == 2
    assert "cannot find the course's notebooks/ folder" in capsys.readouterr().err


def test_sandbox_check_grades_a_solution_in_a_child_process():
    name, ok, detail = cli.sandbox_check(cli.find_course_root())
    assert name == "grading sandbox" and ok, detail
    assert "graded" in detail and "child process" in detail


def test_sandbox_check_reports_a_broken_grader(monkeypatch):
    from bncourse.grading import grade

    def broken(*args, **kwargs):
        raise OSError("cannot start python")

    monkeypatch.setattr(grade, "grade_notebook", broken)
    name, ok, detail = cli.sandbox_check(cli.find_course_root())
    assert not ok and detail == "cannot grade: cannot start python"


def test_sandbox_check_without_a_course_folder_is_skipped(tmp_path):
    assert cli.sandbox_check(None) == (
        "grading sandbox", True, "not checked (no solutions/02_forward_exercises.ipynb here)")
    assert cli.sandbox_check(tmp_path)[1] is True


def test_help_lists_the_grading_commands(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for command in ("grade", "keygen", "certificate", "verify", "assign"):
        assert command in out


def test_keygen_command_writes_the_key_pair(tmp_path, capsys):
    assert cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    out = capsys.readouterr().out
    assert "private_key.pem (keep it secret: mode 0600)" in out and "public_key.pem" in out
    assert (tmp_path / "keys" / "private_key.pem").stat().st_mode & 0o777 == 0o600
    assert cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_grading_commands_run_as_a_program(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bncourse", "keygen", "--out",
                             str(tmp_path / "k")], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "bncourse", "verify", "missing.json",
                             "--public-key", str(tmp_path / "k" / "public_key.pem")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "missing.json: no such file" in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["certificate", "--name", "Ada", "--path", "nowhere"], "--path nowhere: no such folder"),
    (["certificate", "--name", "Ada", "--timeout", "0"], "must be positive"),
    (["verify", "r.json", "--public-key", "nope.pem"], "--public-key nope.pem: no such file"),
])
def test_grading_commands_usage_errors_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text("{}")
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_doctor_names_the_grader_protections(monkeypatch):
    name, ok, detail = cli.protections_check()
    assert name == "grader protections" and ok
    import bncourse.grading.confine as confine

    monkeypatch.setattr(confine, "active_protections",
                        lambda: {"landlock": None, "seccomp": False, "rlimits": True,
                                 "rlimit_nproc_binds": True})
    _, ok, detail = cli.protections_check()
    assert ok and "no Landlock" in detail and "no seccomp" in detail and "rlimits" in detail
