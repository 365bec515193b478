"""The package layout: the repository's top-level folders install under one name, `prefect_mlops`.

The repository keeps the layout of the design (cli/, flows/, tasks/, serving/, model_registry/,
infra/, mlops/ at the top); the wheel maps each folder to a subpackage of `prefect_mlops`, so an
installed project adds one import name, not seven generic ones. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

ROOT = "prefect_mlops"
FOLDERS = ("cli", "mlops", "flows", "tasks", "infra", "model_registry", "serving")

package_dir = {ROOT: ROOT}
packages = [ROOT]
for folder in FOLDERS:
    package_dir[f"{ROOT}.{folder}"] = folder
    found = find_namespace_packages(folder, exclude=["*__pycache__*"])
    packages += [f"{ROOT}.{folder}", *(f"{ROOT}.{folder}.{name}" for name in found)]

setup(packages=packages, package_dir=package_dir)
