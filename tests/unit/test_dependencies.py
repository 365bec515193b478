"""Every third-party module the code imports comes from a declared dependency, pinned in the lock.

The installed packages (tests/project.py's PACKAGES, found where Python imports them from) are
held against pyproject's ``[project].dependencies``; tests/ and benchmarks/, which the wheel
does not install, against those plus the ``dev`` extra. An import is third-party when it is
neither the standard library (``sys.stdlib_module_names``) nor the project's own code;
``importlib.metadata.packages_distributions()`` names the distribution that provides it.
"""

import ast
import importlib.util
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.project import DISTRIBUTION, PACKAGES, UNINSTALLED

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
FIRST_PARTY = set(PACKAGES) | set(UNINSTALLED)


def lock_pins() -> dict[str, str]:
    """Canonical distribution name -> pinned version, from requirements.lock."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        requirement = Requirement(line)  # a marker may follow: a pin only some Pythons need
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"requirements.lock: {line} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def imported_top_level(path: Path) -> set[str]:
    """The top-level module of each absolute import in a file (relative imports are its own)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def installed_files(package: str) -> list[Path]:
    """Every .py file that Python imports under an installed top-level package.

    An editable install maps subpackages to folders outside the package's own (setup.py's
    package_dir): each top-level folder of the repository is asked for under the package too.
    """
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not an installed package"
    folders = set(spec.submodule_search_locations)
    for child in ROOT.iterdir():
        if child.is_dir() and child.name.isidentifier():
            found = importlib.util.find_spec(f"{package}.{child.name}")
            folders |= set(found.submodule_search_locations or []) if found else set()
    return sorted({path for folder in folders for path in Path(folder).rglob("*.py")})


def undeclared_imports(files: list[Path], declared: list[Requirement]) -> list[str]:
    """One line per third-party import whose distribution is not declared: module, file, why."""
    names = {canonicalize_name(r.name) for r in declared}
    providers = packages_distributions()
    problems = []
    for path in files:
        for module in sorted(imported_top_level(path) - FIRST_PARTY - sys.stdlib_module_names):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            distributions = {canonicalize_name(d) for d in providers.get(module, [])}
            if not distributions:
                problems.append(
                    f"{where}: imports {module}, which no installed distribution provides"
                )
            elif not distributions & names:
                problems.append(
                    f"{where}: imports {module} (from {', '.join(sorted(distributions))}), "
                    "not declared in pyproject.toml"
                )
    return problems


def test_the_installed_packages_import_only_declared_dependencies():
    files = [path for package in PACKAGES for path in installed_files(package)]
    assert len(files) > 100  # the whole code base, not an empty folder
    problems = undeclared_imports(files, DEPENDENCIES)
    assert not problems, "add to [project].dependencies:\n" + "\n".join(problems)


def test_tests_and_benchmarks_import_only_dependencies_and_the_dev_extra():
    files = sorted(path for folder in UNINSTALLED for path in (ROOT / folder).rglob("*.py"))
    problems = undeclared_imports(files, DEPENDENCIES + DEV)
    assert not problems, "add to [project].dependencies or the dev extra:\n" + "\n".join(problems)


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range():
    pins = lock_pins()
    for requirement in DEPENDENCIES + DEV:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside {requirement}"
        )


def test_the_packages_checked_are_the_ones_the_distribution_installs():
    provided = {m for m, dists in packages_distributions().items() if DISTRIBUTION in dists}
    assert provided == set(PACKAGES)
