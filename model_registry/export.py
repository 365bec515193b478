"""A registered model version as a self-contained predictor bundle (``mlops export``).

The bundle is a small pip-installable project: the native LightGBM model file, the fitted
feature transform, the model's own copy of the project's feature and prediction code (the
code it was validated with, stored beside it in the registry) and a minimal, pinned list of
requirements. It predicts without MLflow or Prefect, for serverless functions or edge boxes.
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

from mlops.errors import MlopsError
from model_registry.registry import download_version, resolve_version

TEMPLATE = Path(__file__).resolve().parent / "bundle_template"
CODE_FILES = ("errors.py", "features.py", "prediction.py")
"""The model's own modules a bundle carries: they import nothing else of the project."""
MODEL_FILES = ("model.txt", "feature_spec.json", "model_info.json")
RUNTIME_PACKAGES = ("lightgbm", "numpy", "pandas", "pydantic")
"""What the bundle needs at run time, pinned to the versions the model was logged with."""


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


def _write_bundle(source: Path, stage: Path, name: str, version: str, run_id: str) -> Bundle:
    uri = f"models:/{name}/{version}"
    code = source / "code" / "mlops"
    missing = [f for f in MODEL_FILES if not (source / "artifacts" / f).is_file()]
    if missing:
        raise ExportError(f"{uri} is not a pipeline model: it lacks {missing}.")
    if (
        not all((code / f).is_file() for f in CODE_FILES)
        or "from .errors import" not in (code / "features.py").read_text()
    ):
        raise ExportError(
            f"{uri} was logged before models could be exported: its copy of the feature code "
            "cannot run on its own. Retrain it (mlops run) and export the new version."
        )
    package = package_name(name)
    root = stage / package
    (root / "_mlops").mkdir(parents=True)
    (root / "model").mkdir()
    for file in CODE_FILES:
        shutil.copy2(code / file, root / "_mlops" / file)
    (root / "_mlops" / "__init__.py").write_text(
        '"""The feature and prediction code the model version was validated with."""\n'
    )
    shutil.copy2(TEMPLATE / "predictor.py", root / "__init__.py")
    shutil.copy2(TEMPLATE / "__main__.py", root / "__main__.py")
    for file in MODEL_FILES:
        shutil.copy2(source / "artifacts" / file, root / "model" / file)
    spec = json.loads((source / "artifacts" / "feature_spec.json").read_text())
    about = {"model": name, "version": version, "run_id": run_id, "source": uri}
    (root / "model" / "bundle.json").write_text(json.dumps(about, indent=2) + "\n")
    requirements = _runtime_requirements(source / "requirements.txt")
    (stage / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (stage / "pyproject.toml").write_text(_pyproject(name, version, package, requirements))
    (stage / "README.md").write_text(_readme(name, version, package, spec))
    return Bundle(stage, package, name, version, requirements)


def _runtime_requirements(logged: Path) -> list[str]:
    """The model's logged pins of the packages the bundle imports."""
    pins = {}
    for line in logged.read_text().splitlines() if logged.is_file() else []:
        package = re.split(r"[=<>~!\[ ;]", line.strip(), maxsplit=1)[0].lower()
        if package in RUNTIME_PACKAGES:
            pins[package] = line.strip()
    return [pins.get(package, package) for package in RUNTIME_PACKAGES]


def _pyproject(name: str, version: str, package: str, requirements: list[str]) -> str:
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
packages = ["{package}", "{package}._mlops"]

[tool.setuptools.package-data]
{package} = ["model/*"]
'''


def _readme(name: str, version: str, package: str, spec: dict) -> str:
    columns = [*spec["numeric"], *spec["datetime"], *spec["categorical"]]
    return f"""# {name} version {version}, as a predictor

Written by `mlops export`. No MLflow or Prefect needed: the LightGBM model, its fitted feature
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
