"""A clean install on each other supported Python: the lock, then the project's wheel.

The suite runs on Python 3.11 (.venv); this test makes a new virtual environment on 3.12 and
on 3.13, installs requirements.lock into it and then the wheel built from this checkout (not
editable, no dependencies of its own), and uses it: ``mlops --help``, an import of every module
the wheel installed (each from the environment's site-packages, not from the checkout),
``mlops check-config`` and the unit tests of two modules. uv (pinned in the lock) makes the
environments: seconds with its cache warm, under half a minute cold, where pip takes minutes.

An interpreter is found on PATH or among pyenv's versions. Where one is missing the test skips,
except under MLOPS_REQUIRE_PYTHONS (CI's .ci/run), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.project import COMMAND, DISTRIBUTION, PACKAGES

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("3.12", "3.13")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UV = Path(sys.executable).with_name("uv")
# Unit tests run in the new environment against the installed wheel.
UNIT_TESTS = ("tests/unit/test_config.py", "tests/unit/test_dask_cluster.py")
NOT_COPIED = (".git", ".venv", ".mlops", "build", "dist", "*.egg-info", "__pycache__")

SITE_PACKAGES = "import site; print(site.getsitepackages()[0])"
# Imports each module under the packages named, from site-packages only; prints how many.
IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
site = sys.argv[1]
count = 0
for package in sys.argv[2:]:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        assert module.__file__.startswith(site), f"{info.name} from {module.__file__}"
        count += 1
print(count)
"""


def find_python(version: str) -> str | None:
    """A working ``python<version>``: on PATH, or one of pyenv's installs (its shims may refuse)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(pyenv.glob(f"versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return str(candidate)
    return None


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """Run a command; its output, or a failure that shows it."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))} exited {done.returncode}:\n{output[-4000:]}"
    )
    return done.stdout


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without its virtual environment or import path."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    return env | {"MLOPS_HOME": str(home), "UV_PYTHON_DOWNLOADS": "never", "PYTHONNOUSERSITE": "1"}


def installed_set(requirements: str, python: str) -> set[str]:
    """``name==version`` of each line that applies to ``python`` (X.Y), names normalized."""
    found = set()
    for line in requirements.splitlines():
        pin, _, marker = line.partition(";")
        if marker and not Marker(marker).evaluate({"python_version": python}):
            continue
        name, _, version = pin.strip().partition("==")
        found.add(f"{canonicalize_name(name)}=={version}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the checkout (the build leaves files behind)."""
    source = tmp_path_factory.mktemp("source") / "prefect-mlops"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    dist = source.parent / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    run([*build, "--wheel-dir", str(dist), str(source)], source, clean_env(source / ".mlops"))
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def checkout_without_code(tmp_path_factory) -> Path:
    """The tests and configs, without the packages: what they import must come from the wheel."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in ("tests", "configs"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns(*NOT_COPIED))
    shutil.copy(ROOT / "pyproject.toml", folder)  # pytest's settings; no package is found there
    return folder


def test_the_wheel_holds_the_project_packages_and_its_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == set(PACKAGES)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        assert re.search(rf"^{COMMAND} = ", archive.read(entry_points).decode(), re.M)


def new_environment(python: str, wheel: Path, folder: Path, env: dict[str, str]) -> Path:
    """A virtual environment on ``python`` with the lock, then the wheel; its bin folder."""
    venv = folder / "venv"
    run([str(UV), "venv", "--quiet", "--python", python, str(venv)], folder, env)
    install = [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    run([*install, "-r", str(ROOT / "requirements.lock")], folder, env)
    run([*install, "--no-deps", str(wheel)], folder, env)
    return venv / "bin"


def assert_exactly_the_lock(bin_dir: Path, version: str, env: dict[str, str]) -> None:
    """Every requirement met, and nothing installed that the lock does not pin for ``version``."""
    uv_pip = [str(UV), "pip"]
    python = ["--python", str(bin_dir / "python")]
    run([*uv_pip, "check", *python], bin_dir, env)
    installed = installed_set(
        run([*uv_pip, "list", "--format=freeze", *python], bin_dir, env), version
    )
    locked = installed_set((ROOT / "requirements.lock").read_text(), version)
    assert installed - locked == {f"{DISTRIBUTION}=={VERSION}"}, f"not in the lock on {version}"
    assert locked <= installed


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_a_clean_install_works_on(version, wheel, checkout_without_code, tmp_path):
    python = find_python(version)
    if python is None:
        message = f"python{version} is not installed (on PATH or under pyenv)"
        if os.environ.get("MLOPS_REQUIRE_PYTHONS"):
            pytest.fail(f"{message}, and MLOPS_REQUIRE_PYTHONS is set")
        pytest.skip(message)
    assert UV.is_file(), f"{UV} is missing: `make install` installs uv from requirements.lock"
    env = clean_env(tmp_path / "mlops-home")
    bin_dir = new_environment(python, wheel, tmp_path, env)
    assert_exactly_the_lock(bin_dir, version, env)

    assert "check-config" in run([str(bin_dir / COMMAND), "--help"], tmp_path, env)
    site = run([str(bin_dir / "python"), "-c", SITE_PACKAGES], tmp_path, env).strip()
    imported = run(
        [str(bin_dir / "python"), "-c", IMPORT_EVERYTHING, site, *PACKAGES], tmp_path, env
    )
    assert int(imported) > 100

    checkout, config = checkout_without_code, "configs/fraud_detection.yaml"
    said = run([str(bin_dir / COMMAND), "check-config", config], checkout, env)
    assert said.strip() == f"{config}: OK (use case 'fraud-detection', model 'fraud-detector')"
    pytest_run = [str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    tests = run([*pytest_run, *UNIT_TESTS], checkout, env)
    assert re.search(r"\b\d+ passed\b", tests) and " failed" not in tests
