"""The CI workflow, read as data: it tests every supported Python and deploys only images it built.

.github/workflows/ci.yml is held against pyproject.toml (the Pythons), .ci/run, the Makefile,
prefect.production.yaml and infra/k8s/serving.yaml (the images), and infra/docker/ (the
Dockerfiles they are built from).
"""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

from tests.unit.test_containers import (
    DOCKERFILES,
    PRODUCTION,
    SERVING_DOCS,
    image_name,
    instructions,
)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
JOBS: dict[str, dict] = WORKFLOW["jobs"]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BUILD_PUSH = "docker/build-push-action@"
PLACEHOLDER = re.compile(r"\{\{ \$(\w+) \}\}")  # prefect.production.yaml's {{ $VAR }}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def lines(value: str) -> list[str]:
    """A multi-line (or comma-separated) action input, as its items."""
    return [item.strip() for item in re.split(r"[\n,]", value) if item.strip()]


def supported_pythons() -> list[str]:
    prefix = "Programming Language :: Python :: 3."
    minors = [c.removeprefix(prefix) for c in PROJECT["classifiers"] if c.startswith(prefix)]
    return sorted((f"3.{m}" for m in minors if m.isdigit()), key=lambda v: int(v.split(".")[1]))


def build_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith(BUILD_PUSH)]


def as_workflow_expression(reference: str) -> str:
    """A profile's image reference, each {{ $VAR }} written as the workflow's ${{ env.VAR }}."""
    return PLACEHOLDER.sub(lambda m: "${{ env." + m.group(1) + " }}", reference)


# ---------------------------------------------------------------- Pythons


def test_every_supported_python_is_declared_and_tested_in_ci():
    versions = supported_pythons()
    assert versions == ["3.11", "3.12", "3.13"]
    allowed = SpecifierSet(PROJECT["requires-python"])
    assert all(allowed.contains(f"{v}.0") for v in versions)
    assert not allowed.contains("3.10.0") and not allowed.contains(
        f"3.{int(versions[-1][2:]) + 1}.0"
    )
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == "py" + versions[0].replace(".", "")

    matrix = JOBS["test"]["strategy"]["matrix"]["include"]
    assert sorted(entry["python"] for entry in matrix) == versions
    steps = JOBS["test"]["steps"]
    (setup,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["python-version"] == "${{ matrix.setup }}"
    runs = {s.get("if"): s["run"] for s in steps if "run" in s}
    oldest = versions[0]
    # The oldest runs the whole suite, with every other version installed beside it for
    # tests/install (setup-python: the last one listed is the default).
    (whole,) = [e for e in matrix if e["python"] == oldest]
    assert lines(whole["setup"]) == [*versions[1:], oldest]
    assert runs[f"matrix.python == '{oldest}'"] == "bash .ci/run"
    for entry in matrix:
        if entry["python"] != oldest:
            assert lines(entry["setup"]) == [entry["python"]]
    quick = runs[f"matrix.python != '{oldest}'"]
    assert quick == "make test-quick PYTHON=python${{ matrix.python }}"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-quick: .*\n\t\$\(BIN\)/python -m pytest tests/unit ", makefile, re.M)


def test_ci_fails_rather_than_skips_the_clean_installs():
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export MLOPS_REQUIRE_PYTHONS=1$", ci_run, re.M)
    assert ci_run.index("MLOPS_REQUIRE_PYTHONS=1") < ci_run.index("\nmake test")


# ---------------------------------------------------------------- images


def test_the_deploy_job_needs_jobs_that_push_every_image_it_deploys():
    deploy = JOBS["deploy"]
    needed = as_list(deploy["needs"])
    assert "test" in needed
    pushed: dict[str, Path] = {}  # image reference, as the workflow writes it -> its Dockerfile
    for name in needed:
        job = JOBS[name]
        steps = build_steps(job)
        if not steps:
            continue
        assert job.get("if") == deploy.get("if"), f"{name} must run whenever deploy does"
        uses = [s.get("uses", "").split("@")[0] for s in job["steps"]]
        first_build = uses.index(BUILD_PUSH.removesuffix("@"))
        assert "docker/setup-buildx-action" in uses[:first_build], name
        assert "docker/login-action" in uses[:first_build], name
        (login,) = [s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action@")]
        for credential in ("username", "password"):
            assert re.fullmatch(r"\$\{\{ secrets\.\w+ \}\}", login["with"][credential]), credential
        for step in steps:
            given = step["with"]
            assert given["push"] is True, step["name"]
            dockerfile = (ROOT / given["context"] / given["file"]).resolve()
            assert dockerfile in DOCKERFILES, f"{step['name']}: no Dockerfile {given['file']}"
            # A Dockerfile built FROM ${BASE_IMAGE} gets an image an earlier step pushed.
            base_args = [
                a for a in lines(given.get("build-args", "")) if a.startswith("BASE_IMAGE=")
            ]
            if any("${BASE_IMAGE}" in a for k, a in instructions(dockerfile) if k == "FROM"):
                (base,) = base_args
                assert base.removeprefix("BASE_IMAGE=") in pushed, step["name"]
            for tag in lines(given["tags"]):
                role = dockerfile.name.removeprefix("Dockerfile.")
                assert image_name(tag) == f"prefect-mlops-{role}", f"{tag} from {dockerfile.name}"
                pushed[tag] = dockerfile
            # The expressions the tags use have the deploy job's values.
            for variable in re.findall(r"\$\{\{ env\.(\w+) \}\}", given["tags"]):
                assert job["env"][variable] == deploy["env"][variable], variable
    assert pushed, "no job that deploy needs builds an image"

    deployed = {d["work_pool"]["job_variables"]["image"] for d in PRODUCTION["deployments"]}
    for reference in deployed:
        expected = as_workflow_expression(reference)
        assert expected in pushed, f"prefect.production.yaml runs {reference}; CI never pushes it"
    assert deploy["env"]["MLOPS_IMAGE_TAG"] == "${{ github.sha }}"

    (serving,) = [doc for doc in SERVING_DOCS if doc["kind"] == "Deployment"]
    (container,) = serving["spec"]["template"]["spec"]["containers"]
    assert image_name(container["image"]) in {image_name(tag) for tag in pushed}
