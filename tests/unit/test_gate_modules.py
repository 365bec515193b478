"""Each gate's checks are defined in one module: a new check has one place to go."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("cli", "benchmarks", "flows", "tasks", "serving", "model_registry", "infra", "mlops")


def source_files() -> list[Path]:
    return [path for folder in SOURCE_DIRS for path in sorted((ROOT / folder).rglob("*.py"))]


def where(predicate) -> dict[str, list[int]]:
    """Module path -> line numbers of the AST nodes for which ``predicate`` is true."""
    found: dict[str, list[int]] = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if predicate(node):
                found.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    return found


def is_expectation_type(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("expect_")
    )


def model_gate_check_name(node: ast.AST) -> str | None:
    """The ``name=`` of a ``GateCheck(gate="model", ...)`` call (``?`` when not a literal)."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "GateCheck"):
        return None
    keywords = {k.arg: k.value for k in node.keywords}
    gate = keywords.get("gate")
    if not (isinstance(gate, ast.Constant) and gate.value == "model"):
        return None
    name = keywords.get("name")
    return name.value if isinstance(name, ast.Constant) else "?"


def test_the_data_gate_expectations_are_named_only_in_its_checks_module():
    assert set(where(is_expectation_type)) == {"tasks/data_gate_checks.py"}


def test_the_model_gate_checks_are_built_only_in_its_checks_module():
    checks = where(lambda node: model_gate_check_name(node) not in (None, "model_gate"))
    assert set(checks) == {"tasks/model_gate_checks.py"}
    # The one exception: the ledger's record that the model gate did not run at all.
    markers = where(lambda node: model_gate_check_name(node) == "model_gate")
    assert set(markers) == {"tasks/model_gate.py"}
