"""A registered model version as a self-contained predictor bundle (``mlops export``).

The bundle is a small pip-installable project: the model's files (its family's native model
file, the fitted feature transform, the task facts), the model's own copy of the project's
feature code and of its family's predictor (the code it was validated with, stored beside it
in the registry) and a minimal, pinned list of requirements. It predicts without MLflow or
Prefect, for serverless functions or edge boxes.
It is written to a temporary folder next to the destination and renamed into place, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.families import FAMILIES, model_family, predictor_module
from prefect_mlops.mlops.prediction import INFO_FILE, SPEC_FILE
from prefect_mlops.model_registry.registry import download_version, resolve_version

TEMPLATE = Path(__file__).resolve().parent / "bundle_template"
CODE_FILES = ("errors.py", "features.py", "prediction.py")
"""The model's own modules a bundle carries besides its family's predictor: they import
nothing else of the project."""
SHARED_MODEL_FILES = (SPEC_FILE, INFO_FILE)
RUNTIME_PACKAGES = ("numpy", "pandas", "pydantic")
"""What the bundle needs at run time besides its family's packages, pinned to the versions the
model was logged with."""


class ExportError(MlopsError):
    """The model version cannot be exported, or the destination is not usable."""


@dataclass(frozen=True)
class Bundle:
    """What ``export_bundle`` wrote."""

    path: Path
    package: str
    model_name: str
    version: str
    requirements: list[str]


def package_name(model_name: str) -> str:
    """The bundle's Python package: ``fraud-detector`` -> ``fraud_detector_predictor``."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", model_name).strip("_").lower() or "model"
    return f"{'m_' if slug[0].isdigit() else ''}{slug}_predictor"


def export_bundle(client: MlflowClient, reference: str, out: Path, tracking_uri: str) -> Bundle:
    """Write the predictor bundle of ``reference`` (``NAME``, ``NAME@alias``, ``NAME/version``).

    Raises:
        ExportError: the destination holds files already, or the version lacks what a bundle
            needs (it was not logged by the pipeline, or before bundles existed).
        ModelLoadError: the model, alias or version does not exist.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; pass a new --out.")
    name, version, run_id = resolve_version(client, reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="export-") as tmp:
            source = download_version(client, name, version, tmp, tracking_uri)
            bundle = _write_bundle(source, stage, name, version, run_id)
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Bundle(out, bundle.package, name, version, bundle.requirements)


@dataclass(frozen=True)
class _BundleCode:
    """What a model version's bundle is made of, by its family."""

    family: str
    library: str
    model_files: tuple[str, ...]
    code_files: tuple[str, ...]
    packages: tuple[str, ...]


def _bundle_code(source: Path, uri: str) -> _BundleCode:
    """The family of the downloaded version ``source`` and the files its bundle needs.

    Raises:
        ExportError: the version is not a pipeline model, or of an unknown family.
    """
    artifacts = source / "artifacts"
    missing = [f for f in SHARED_MODEL_FILES if not (artifacts / f).is_file()]
    family = model_family(artifacts)
    try:
        module = predictor_module(family)
    except KeyError:
        raise ExportError(
            f"{uri} is of an unknown model family '{family}'. Known families: "
            f"{', '.join(FAMILIES)}; a new family is registered in mlops/families/__init__.py "
            "(docs/model-families.md)."
        ) from None
    missing += [f for f in module.MODEL_FILES if not (artifacts / f).is_file()]
    if missing:
        raise ExportError(f"{uri} is not a pipeline model: it lacks {missing}.")
    return _BundleCode(
        family=family,
        library=module.LIBRARY,
        model_files=(*module.MODEL_FILES, *SHARED_MODEL_FILES),
        code_files=(*CODE_FILES, f"families/{family}/predictor.py"),
        packages=(*module.REQUIREMENTS, *RUNTIME_PACKAGES),
    )


def _write_bundle(source: Path, stage: Path, name: str, version: str, run_id: str) -> Bundle:
    uri = f"models:/{name}/{version}"
    parts = _bundle_code(source, uri)
    code = model_code_folder(source)
    if (
        not all((code / f).is_file() for f in parts.code_files)
        or "from .errors import" not in (code / "features.py").read_text()
    ):
        raise ExportError(
            f"{uri} was logged before model families (or before models could be exported): "
            "its copy of the prediction code cannot run on its own. Retrain it (mlops run) and "
            "export the new version; serving and loading it still work."
        )
    package = package_name(name)
    root = stage / package
    _copy_code(code, root / "_mlops", parts)
    (root / "model").mkdir()
    shutil.copy2(TEMPLATE / "predictor.py", root / "__init__.py")
    shutil.copy2(TEMPLATE / "__main__.py", root / "__main__.py")
    for file in parts.model_files:
        shutil.copy2(source / "artifacts" / file, root / "model" / file)
    spec = json.loads((source / "artifacts" / SPEC_FILE).read_text())
    about = {"model": name, "version": version, "run_id": run_id, "source": uri}
    (root / "model" / "bundle.json").write_text(json.dumps(about, indent=2) + "\n")
    requirements = _runtime_requirements(source / "requirements.txt", parts.packages)
    (stage / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (stage / "pyproject.toml").write_text(
        _pyproject(name, version, package, requirements, parts.family)
    )
    (stage / "README.md").write_text(_readme(name, version, package, spec, parts.library))
    return Bundle(stage, package, name, version, requirements)


def model_code_folder(source: Path) -> Path:
    """The model's copy of the ``mlops`` package: ``code/prefect_mlops/mlops`` since the
    project installs as one package, ``code/mlops`` in versions logged before."""
    packaged = source / "code" / "prefect_mlops" / "mlops"
    return packaged if packaged.is_dir() else source / "code" / "mlops"


def _copy_code(code: Path, target: Path, parts: _BundleCode) -> None:
    """The model's copy of the shared code and of its family's predictor, as ``_mlops``."""
    family = target / "families" / parts.family
    family.mkdir(parents=True)
    for file in parts.code_files:
        shutil.copy2(code / file, target / file)
    (target / "__init__.py").write_text(
        '"""The feature and prediction code the model version was validated with."""\n'
    )
    (target / "families" / "__init__.py").write_text('"""The model\'s family."""\n')
    (family / "__init__.py").write_text(f'"""The {parts.library} predictor."""\n')


def _runtime_requirements(logged: Path, packages: tuple[str, ...]) -> list[str]:
    """The model's logged pins of the packages the bundle imports."""
    pins = {}
    for line in logged.read_text().splitlines() if logged.is_file() else []:
        package = re.split(r"[=<>~!\[ ;]", line.strip(), maxsplit=1)[0].lower()
        if package in packages:
            pins[package] = line.strip()
    return [pins.get(package, package) for package in packages]


def _pyproject(name: str, version: str, package: str, requirements: list[str], family: str) -> str:
    dependencies = ",\n".join(f'    "{r}"' for r in requirements)
    return f'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{package.replace("_", "-")}"
version = "{version}"
description = "{name} version {version} as a self-contained predictor (written by mlops export)."
requires-python = ">=3.10"
dependencies = [
{dependencies},
]

[project.scripts]
{package.replace("_", "-")} = "{package}.__main__:main"

[tool.setuptools]
packages = [
    "{package}",
    "{package}._mlops",
    "{package}._mlops.families",
    "{package}._mlops.families.{family}",
]

[tool.setuptools.package-data]
{package} = ["model/*"]
'''


def _readme(name: str, version: str, package: str, spec: dict, library: str) -> str:
    columns = [*spec["numeric"], *spec["datetime"], *spec["categorical"]]
    return f"""# {name} version {version}, as a predictor

Written by `mlops export`. No MLflow or Prefect needed: the {library} model, its fitted feature
transform and the feature code it was validated with are in `{package}/`.

```bash
pip install .                      # installs {package} and its pinned requirements
python -m {package} rows.csv       # or rows.json, or - for JSON on stdin: prints {{"predictions": [...]}}
```

```python
from {package} import load
predictor = load()
predictor.predict(rows)            # a DataFrame, a list of row objects, or an object of columns
```

Input columns: {", ".join(f"`{c}`" for c in columns)}. Dates as ISO 8601 text.
"""
