"""What the project's wheel provides, in one place for the packaging tests.

tests/unit/test_dependencies.py and tests/install/ read these names and nothing else; a change
of layout is a change here, and the tests check that it matches the installed distribution and
the wheel that is built.
"""

DISTRIBUTION = "prefect-mlops"
# The importable top-level packages the wheel installs (setup.py maps the repository's folders
# under it).
PACKAGES = ("prefect_mlops",)
# Its console script.
COMMAND = "mlops"
# Code of this repository that the wheel does not install: its imports are checked against
# the dependencies plus pyproject's `dev` extra.
UNINSTALLED = ("tests", "benchmarks")
