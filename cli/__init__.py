"""The ``mlops`` command line: one module per command group, registered on ``cli.root.app``.

- ``pipeline``: run, trigger, recommend
- ``stack``: up, status, down, ui, mlflow-server
- ``serving``: serve, export
- ``monitoring``: monitor, simulate-traffic
- ``allocator``: allocator history / export / import
- ``data``: generate, check-config

A command parses its options, calls the package that owns the work, and formats the outcome.
"""

from prefect_mlops.cli import allocator, data, monitoring, pipeline, serving, stack  # noqa: F401  (registers)
