"""What the project's wheel provides, in one place for the packaging tests.

tests/unit/test_dependencies.py and tests/install/ read these names and nothing else; a change
of layout (say, every package under one namespace) is a change here, and the tests check that
it matches pyproject.toml and the wheel that is built.
"""

DISTRIBUTION = "prefect-mlops"
# The importable top-level packages the wheel installs.
PACKAGES = ("cli", "flows", "infra", "mlops", "model_registry", "serving", "tasks")
# Its console script.
COMMAND = "mlops"
# Code of this repository that the wheel does not install: its imports are checked against
# the dependencies plus pyproject's `dev` extra.
UNINSTALLED = ("tests", "benchmarks")
