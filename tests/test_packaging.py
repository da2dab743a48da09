"""pyproject.toml and environment.yml list the same packages; .ci/run runs the README's commands."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from PyPI's
CONDA_TO_PIP = {"pytorch": "torch"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_name(r) for r in reqs}


def _conda_packages() -> set[str]:
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    names = set()
    for dep in deps:
        if isinstance(dep, dict):
            names |= {_name(r) for r in dep["pip"]}
        else:
            names.add(CONDA_TO_PIP.get(_name(dep), _name(dep)))
    return names - NOT_PACKAGES


def test_environment_yml_matches_pyproject():
    pip, conda = _pyproject_packages(), _conda_packages()
    assert pip == conda, f"only in pyproject: {sorted(pip - conda)}; only in environment.yml: {sorted(conda - pip)}"


def test_environment_yml_asks_for_cpu_torch():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"pytorch.*=cpu", text), "environment.yml must pin conda-forge's CPU build of pytorch"


def _readme_block(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"{heading}.*?```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert match, f"README.md has no code block after '{heading}'"
    return match.group(1)


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = _readme_block("Install and open the course")
    # every set-up step of the README runs in CI, except opening JupyterLab
    steps = [s.strip() for s in setup.replace("\\\n", " ").split("&&")]
    for step in steps:
        if step.startswith(("bncourse lab", "jupyter lab")) or step.startswith(("python3 -m venv", ". .venv")):
            continue
        assert step in ci, f"README set-up step {step!r} is not in .ci/run"
    test_cmd = _readme_block("Run the whole test suite").strip().splitlines()[-1]
    test_cmd = test_cmd.split("&&")[-1].strip()
    assert f"\n{test_cmd}\n" in ci, f"README test command {test_cmd!r} is not run as such by .ci/run"
