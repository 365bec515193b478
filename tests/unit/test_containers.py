"""The container and Kubernetes files of the production profile, checked without Docker or a cluster.

compose.yaml, the Dockerfiles and the Kubernetes manifests are read as data and held against
the project files they must agree with: prefect.yaml's pools, prefect.production.yaml's images
and job variables, requirements.lock's pins. Prefect's own validators check the work-pool
templates, as the server does when a pool is created or a deployment is applied.
"""

import inspect
import json
import re
import shlex
from pathlib import Path

import yaml
from prefect.server.api.validation import is_valid_schema
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.schema_tools.validation import validate
from prefect.utilities.templating import PlaceholderType, apply_values, find_placeholders

from prefect_mlops.cli.serving import serve

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"
K8S = ROOT / "infra" / "k8s"

COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
LOCAL = yaml.safe_load((ROOT / "prefect.yaml").read_text())
PRODUCTION = yaml.safe_load((ROOT / "prefect.production.yaml").read_text())
TEMPLATES = {p.stem: json.loads(p.read_text()) for p in (K8S / "work-pools").glob("*.json")}
SERVING_DOCS = list(yaml.safe_load_all((K8S / "serving.yaml").read_text()))
SECRET = yaml.safe_load((K8S / "secret.example.yaml").read_text())

DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
BUILT_HERE = {f"prefect-mlops-{p.name.removeprefix('Dockerfile.')}": p for p in DOCKERFILES}
IMAGE_TAG = "${MLOPS_IMAGE_TAG:-latest}"
BIND = "${MLOPS_BIND_ADDRESS:-127.0.0.1}"
ARTIFACTS = "/data/artifacts"

VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|AUTH_STRING|SECRET|API_KEY")
TRAIN_POOLS = {"train-pool", "train-gpu-pool"}


# ---------------------------------------------------------------- helpers


def strings_in(value) -> list[str]:
    """Every string in a parsed YAML/JSON value, anchors and merges already resolved."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def prefect_workers() -> dict[str, dict]:
    return {n: s for n, s in SERVICES.items() if command(s)[:3] == ["prefect", "worker", "start"]}


def env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose_variables() -> dict[str, tuple[str, str]]:
    """Variable -> (operator, default or message) for every ${...} compose.yaml interpolates."""
    found = {}
    for text in strings_in(COMPOSE):
        for name, operator, rest in VARIABLE.findall(text):
            found[name] = (operator, rest)
    return found


def mounts(service: dict) -> dict[str, str]:
    """Container path -> volume name or host path."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in (raw.strip() for raw in dockerfile.read_text().splitlines()):
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def arg_default(dockerfile: Path, name: str) -> str:
    (default,) = [
        a.split("=", 1)[1]
        for k, a in instructions(dockerfile)
        if k == "ARG" and a.startswith(f"{name}=")
    ]
    return default


def expand(reference: str, args: dict[str, str]) -> str:
    """A FROM reference with each ${ARG} replaced by the default declared before it."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)


def image_name(reference: str) -> str:
    return reference.rsplit("/", 1)[-1].split(":")[0]


def render(template: dict, job_variables: dict) -> dict:
    """The job configuration a Kubernetes worker builds from a template and job variables."""
    properties = template["variables"]["properties"]
    values = {n: p["default"] for n, p in properties.items() if p.get("default") is not None}
    return apply_values(template["job_configuration"], values | job_variables)


def pod_spec(job_configuration: dict) -> dict:
    return job_configuration["job_manifest"]["spec"]["template"]["spec"]


def quantity(value: str | int) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(m|Mi|Gi)?", str(value)).groups()
    return float(number) * {None: 1, "m": 1e-3, "Mi": 2**20, "Gi": 2**30}[unit]


def secret_refs(env: list[dict]) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}


def production_job_variables(pool: str) -> list[dict]:
    return [
        d["work_pool"]["job_variables"]
        for d in PRODUCTION["deployments"]
        if d["work_pool"]["name"] == pool
    ]


# ---------------------------------------------------------------- compose.yaml


def test_compose_runs_the_whole_stack_on_images_built_here():
    assert {
        "postgres",
        "prefect-server",
        "mlflow-server",
        "dask-scheduler",
        "dask-worker",
        "serving",
    } <= set(SERVICES)
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            build = service["build"]
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
            continue
        image = service["image"]
        if image.startswith("prefect-mlops-"):
            assert image.split(":")[0] in BUILT_HERE, f"{name}: no Dockerfile builds {image}"
            assert image.endswith(f":{IMAGE_TAG}"), name
        else:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}'s tag"


def test_every_variable_compose_reads_is_in_the_env_example_with_its_default():
    example = env_example()
    variables = compose_variables()
    assert set(variables) == set(example)
    for name, (operator, rest) in variables.items():
        if operator == ":-":
            assert example[name] == rest, (
                f"{name}: .env.example says {example[name]}, compose {rest}"
            )
        else:  # required: compose stops with the message when it is unset
            assert operator == ":?" and "change-me" in example[name], name
    bare = [s for s in strings_in(COMPOSE) if re.search(r"(?<![$])\$(?![{$])\w", s)]
    assert not bare, f"write ${{NAME}}, not $NAME: {bare}"


def test_compose_holds_no_credential_only_required_variables():
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key} = {value}"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", value):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", password), f"{name}.{key}"


def test_published_ports_bind_the_loopback_unless_told_otherwise():
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            address, host_port, container_port = port.rsplit(":", 2)
            assert address == BIND and host_port == container_port, f"{name}: {port}"
            published[int(container_port)] = name
    assert published == {
        4200: "prefect-server",
        5000: "mlflow-server",
        5001: "serving",
        8787: "dask-scheduler",  # the dashboard; the scheduler's 8786 is internal
    }


def test_one_prefect_worker_per_work_pool_in_the_image_of_its_role():
    local_pools = {d["work_pool"]["name"] for d in LOCAL["deployments"]}
    workers = prefect_workers()
    by_pool = {}
    for name, service in workers.items():
        cmd = command(service)
        assert option(cmd, "--type") == "process", name
        pool = option(cmd, "--pool")
        assert pool not in by_pool, f"{pool} has two workers"
        by_pool[pool] = service
    always = {pool for pool, s in by_pool.items() if not s.get("profiles")}
    assert always == local_pools
    # The GPU pool exists in the production profile only; its worker is opt-in.
    gpu = by_pool["train-gpu-pool"]
    assert set(by_pool) - always == {"train-gpu-pool"} and gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    roles = {pool: image_name(s["image"]) for pool, s in by_pool.items()}
    assert roles.pop("train-pool") == "prefect-mlops-train-cpu"
    assert roles.pop("train-gpu-pool") == "prefect-mlops-train-gpu"
    assert set(roles.values()) == {"prefect-mlops-base"}


def test_workers_reach_the_servers_the_cluster_and_one_artifact_volume():
    workers = prefect_workers()
    sharing = [*workers.values(), SERVICES["dask-worker"]]
    assert all(mounts(s).get(ARTIFACTS) == "artifacts" for s in sharing)
    assert "artifacts" in COMPOSE["volumes"]
    scheduler = command(SERVICES["dask-scheduler"])
    serving_port = SERVICES["serving"]["ports"][0].rsplit(":", 1)[1]
    for name, service in workers.items():
        env = environment(service)
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow-server:5000", name
        assert env["MLOPS_ARTIFACT_STORE"] == ARTIFACTS, name
        assert env["PREFECT_LOCAL_STORAGE_PATH"].startswith(ARTIFACTS + "/"), name
        assert env["MLOPS_PROJECT_DIR"] == "/opt/prefect-mlops", name
        pool = option(command(service), "--pool")
        if pool in {"train-pool", "orchestrator-pool"}:
            address = f"tcp://dask-scheduler:{option(scheduler, '--port')}"
            assert env["MLOPS_DASK_SCHEDULER_ADDRESS"] == address, name
        assert ("MLOPS_SERVING_ADMIN_TOKEN" in env) == (pool == "deploy-pool"), name
    deploy = environment(workers["worker-deploy"])
    assert deploy["MLOPS_SERVING_URLS"] == f"http://serving:{serving_port}"
    monitor, serving = environment(workers["worker-monitor"]), environment(SERVICES["serving"])
    assert monitor["MLOPS_INFERENCE_LOG"] == serving["MLOPS_INFERENCE_LOG"] == "sql"
    assert monitor["MLOPS_INFERENCE_LOG_URL"] == serving["MLOPS_INFERENCE_LOG_URL"]
    assert deploy["MLOPS_SERVING_ADMIN_TOKEN"] == serving["MLOPS_SERVING_ADMIN_TOKEN"]


def test_postgres_creates_every_database_the_services_connect_to():
    postgres = SERVICES["postgres"]
    init = DOCKER / mounts(postgres)["/docker-entrypoint-initdb.d"]
    created = set()
    for script in init.glob("*.sql"):
        created |= set(re.findall(r"CREATE DATABASE (\w+)", script.read_text()))
    assert created == {"prefect", "mlflow", "mlflow_auth", "mlops"}
    named = set()
    for text in strings_in(SERVICES):
        named |= set(re.findall(r"@postgres:5432/(\w+)", text))
    assert named == created
    assert environment(postgres)["POSTGRES_DB"] not in created  # else the image creates it first
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


# ---------------------------------------------------------------- Dockerfiles


def test_dockerfiles_start_from_known_images_and_copy_files_that_exist():
    for dockerfile in DOCKERFILES:
        global_args, stages = {}, []  # FROM lines see only the ARGs declared before the first
        for keyword, arguments in instructions(dockerfile):
            if keyword == "ARG" and "=" in arguments and not stages:
                name, default = arguments.split("=", 1)
                global_args[name] = default
            elif keyword == "FROM":
                reference, _, alias = arguments.partition(" AS ")
                image = expand(reference, global_args)
                local = image_name(image) in BUILT_HERE or image in stages
                assert local or ":" in image, f"{dockerfile.name}: {image} has no tag"
                stages.append(alias or image)
            elif keyword == "COPY" and "--from=" not in arguments:
                *sources, _ = shlex.split(arguments)
                for source in sources:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
        if any(k == "COPY" and "--from=" not in a for k, a in instructions(dockerfile)):
            ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
            assert {".venv", ".mlops", ".git"} <= set(ignore.split()), dockerfile.name


def test_images_that_install_the_project_do_not_keep_its_package_folder_where_flows_run():
    # /opt/prefect-mlops is the flows' working directory: a prefect_mlops/ folder there (its
    # __init__ alone, the subpackages being the other folders) would shadow the installed one.
    installs = 0
    for dockerfile in DOCKERFILES:
        for keyword, arguments in instructions(dockerfile):
            if keyword == "RUN" and "--no-deps --no-build-isolation ." in arguments:
                installs += 1
                assert "rm -rf" in arguments and "./prefect_mlops" in arguments, dockerfile.name
    assert installs == 2  # the base image and the GPU training image


def test_the_production_profile_deploys_only_images_built_here():
    images = re.findall(
        r"/(prefect-mlops-[a-z-]+):", (ROOT / "prefect.production.yaml").read_text()
    )
    assert set(images) <= set(BUILT_HERE)
    assert {"prefect-mlops-base", "prefect-mlops-serving"} <= set(BUILT_HERE)


def test_the_base_image_installs_the_lock_then_the_project_where_flows_run_as_non_root():
    steps = instructions(DOCKER / "Dockerfile.base")
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "pip install --no-cache-dir -r requirements.lock" in runs
    assert runs.index("-r requirements.lock") < runs.index("--no-deps")
    assert "libgomp1" in runs
    (pull,) = PRODUCTION["pull"]
    directory = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert ("WORKDIR", directory) in steps
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in {"root", "0"}
    for dockerfile in DOCKERFILES:  # images built on it never switch back to root
        assert ("USER", "root") not in instructions(dockerfile), dockerfile.name


def test_the_gpu_image_has_lightgbm_and_xgboost_with_cuda_at_the_locked_versions():
    dockerfile = DOCKER / "Dockerfile.train-gpu"
    (pinned,) = re.findall(r"^lightgbm==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert arg_default(dockerfile, "LIGHTGBM_VERSION") == pinned
    runs = " ".join(a for k, a in instructions(dockerfile) if k == "RUN")
    assert '--no-binary lightgbm "lightgbm==${LIGHTGBM_VERSION}"' in runs
    assert "--config-settings=cmake.define.USE_CUDA=ON" in runs
    assert "-r requirements.lock" in runs
    (xgboost,) = re.findall(r"^xgboost-cpu==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert arg_default(dockerfile, "XGBOOST_VERSION") == xgboost
    assert "pip uninstall --yes xgboost-cpu" in runs and '"xgboost==${XGBOOST_VERSION}"' in runs
    bases = [a for k, a in instructions(dockerfile) if k == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu22\.04 AS builder", bases[0])
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu22\.04", bases[-1])
    users = [a for k, a in instructions(dockerfile) if k == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_the_serving_image_listens_on_all_interfaces_and_checks_its_health():
    steps = instructions(DOCKER / "Dockerfile.serving")
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "MLOPS_SERVING_HOST=0.0.0.0" in env and "MLOPS_SERVING_PORT=5001" in env
    assert ("EXPOSE", "5001") in steps
    (check,) = [a for k, a in steps if k == "HEALTHCHECK"]
    assert "http://127.0.0.1:5001/health" in check and "curl" not in check
    (cmd,) = [a for k, a in steps if k == "CMD"]
    assert 'mlops serve \\"${MLOPS_SERVING_MODEL}\\" --wait-for-model' in cmd
    assert "wait_for_model" in inspect.signature(serve).parameters  # `--wait-for-model`


def test_nothing_under_infra_names_a_package_registry_host():
    hosts = ("pypi.org", "pypi.python.org", "pythonhosted", "anaconda.org", "npmjs")
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_text(errors="ignore").lower()
            assert not [h for h in hosts if h in text], path.relative_to(ROOT)


# ---------------------------------------------------------------- Kubernetes work pools


def test_every_production_pool_has_a_template_prefect_accepts():
    pools = {d["work_pool"]["name"] for d in PRODUCTION["deployments"]}
    assert set(TEMPLATES) == pools
    for template in TEMPLATES.values():
        validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
        is_valid_schema(template["variables"], preprocess=False)


def test_production_job_variables_are_declared_and_reach_the_job():
    for pool, template in TEMPLATES.items():
        properties = template["variables"]["properties"]
        for job_variables in production_job_variables(pool):
            assert set(job_variables) <= set(properties), pool
            defaults = {n: p["default"] for n, p in properties.items() if "default" in p}
            # As the server does when a deployment is applied (raises on a mismatch).
            validate(
                defaults | job_variables,
                template["variables"],
                raise_on_error=True,
                ignore_required=True,
                allow_none_with_default=True,
            )
            job = render(template, job_variables)
            container = pod_spec(job)["containers"][0]
            assert container["image"] == job_variables["image"]
            assert container["imagePullPolicy"] == job_variables["image_pull_policy"]
            assert job["namespace"] == job["job_manifest"]["metadata"]["namespace"]
            assert job["job_manifest"]["metadata"]["namespace"] == job_variables["namespace"]
            assert job["job_manifest"]["spec"]["ttlSecondsAfterFinished"] == 3600
            assert job["env"] == job_variables["env"]
            left = [p.name for p in find_placeholders(job) if p.type is PlaceholderType.STANDARD]
            assert not left, f"{pool}: unfilled {left}"
            default_image = image_name(properties["image"]["default"])
            assert default_image == image_name(job_variables["image"]), pool


def test_the_job_manifest_has_what_the_kubernetes_worker_requires():
    for pool, template in TEMPLATES.items():
        job = template["job_configuration"]
        assert job["env"] == "{{ env }}" and job["command"] == "{{ command }}", pool
        manifest = job["job_manifest"]
        assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
        assert manifest["metadata"]["namespace"] == "{{ namespace }}"
        assert manifest["spec"]["ttlSecondsAfterFinished"] == "{{ finished_job_ttl }}"
        pod = pod_spec(job)
        assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
        container = pod["containers"][0]
        assert container["name"] == "prefect-job", pool
        assert container["image"] == "{{ image }}" and container["args"] == "{{ command }}"
        assert container["imagePullPolicy"] == "{{ image_pull_policy }}"
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_credentials_reach_pods_from_the_secret_and_only_where_needed():
    keys = set(SECRET["stringData"])
    assert all("change-me" in value for value in SECRET["stringData"].values())
    for pool, template in TEMPLATES.items():
        env = pod_spec(template["job_configuration"])["containers"][0]["env"]
        refs = secret_refs(env)
        assert {r["name"] for r in refs.values()} == {SECRET["metadata"]["name"]}, pool
        assert {r["key"] for r in refs.values()} <= keys, pool
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(refs), pool
        assert ("MLOPS_SERVING_ADMIN_TOKEN" in refs) == (pool == "deploy-pool"), pool
        assert refs["MLOPS_ARTIFACT_STORE_OPTIONS"]["optional"] is True, pool
        plain = [e["name"] for e in env if "value" in e]
        assert not [n for n in plain if SECRET_NAME.search(n) or n.endswith("_URL")], pool
    monitor = pod_spec(TEMPLATES["monitor-pool"]["job_configuration"])["containers"][0]["env"]
    assert {"name": "MLOPS_INFERENCE_LOG", "value": "sql"} in monitor
    assert "MLOPS_INFERENCE_LOG_URL" in secret_refs(monitor)


def test_training_pools_get_more_resources_and_the_gpu_pool_a_gpu():
    requests = {}
    for pool, template in TEMPLATES.items():
        resources = pod_spec(render(template, {}))["containers"][0]["resources"]
        requests[pool] = {k: quantity(v) for k, v in resources["requests"].items()}
        assert quantity(resources["limits"]["memory"]) >= requests[pool]["memory"], pool
        gpus = resources["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if pool == "train-gpu-pool" else None), pool
    for kind in ("cpu", "memory"):
        others = max(r[kind] for p, r in requests.items() if p not in TRAIN_POOLS)
        assert all(requests[p][kind] > others for p in TRAIN_POOLS), kind
    tolerations = pod_spec(TEMPLATES["train-gpu-pool"]["job_configuration"])["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


# ---------------------------------------------------------------- Kubernetes serving


def test_the_serving_services_route_to_the_deployments_pods_on_5001():
    (deployment,) = [doc for doc in SERVING_DOCS if doc["kind"] == "Deployment"]
    services = {doc["metadata"]["name"]: doc for doc in SERVING_DOCS if doc["kind"] == "Service"}
    assert len(SERVING_DOCS) == 3
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        target = port["targetPort"]
        assert port["port"] == (ports[target] if isinstance(target, str) else target) == 5001
    assert services["prefect-mlops-serving"]["spec"]["type"] == "ClusterIP"
    # The deploy stage reloads every replica through the headless one (one address per pod).
    assert services["prefect-mlops-serving-replicas"]["spec"]["clusterIP"] == "None"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/health" and ports.get(check["port"], check["port"]) == 5001


def test_serving_rolls_out_without_losing_capacity_and_reads_the_secret():
    deployment = next(doc for doc in SERVING_DOCS if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert image_name(container["image"]) == "prefect-mlops-serving"
    assert {"requests", "limits"} <= set(container["resources"])
    refs = secret_refs(container["env"])
    assert {r["name"] for r in refs.values()} == {SECRET["metadata"]["name"]}
    assert {r["key"] for r in refs.values()} <= set(SECRET["stringData"])
    assert {"MLOPS_SERVING_ADMIN_TOKEN", "MLFLOW_TRACKING_PASSWORD"} <= set(refs)
    assert refs["MLOPS_ARTIFACT_STORE_OPTIONS"]["optional"] is True
