"""The docker-compose stack and its image, checked without a Docker engine.

docker-compose.yaml goes through a real Compose CLI (`docker compose` v2 where the docker CLI has the plugin,
else the standalone `docker-compose`: Debian's 1.29.2 from scripts/install-system-packages.sh, or v2), and
the tests read the configuration it resolves. The postgres init script runs against a real PostgreSQL
(pgserver). The Dockerfile is parsed; docker/install-python-deps.sh prints the requirements it would install.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_HINT = "Install one with scripts/install-system-packages.sh (as root, or a user with sudo)."

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-cpu",
    "airflow-worker-gpu",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init"}
ONE_SHOT_SERVICES = {"airflow-init", "minio-init"}
EXECUTION_API = "http://airflow-apiserver:8080/execution/"
# What `docker compose up` starts without a --profile.
DEFAULT_SERVICES = REQUIRED_SERVICES - {"airflow-worker-gpu", "minio", "minio-init"}
# Variables of the host environment that the compose file reads: cleared so a developer's shell or .env
# does not change what the tests see.
ENV_PREFIXES = ("AIRFLOW", "_AIRFLOW", "LIGHTLY_", "POSTGRES_", "MINIO_", "COMPOSE_")


# --- the Compose CLI ---------------------------------------------------------------------------------------


@functools.cache
def compose_cli() -> tuple[str, ...]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    pytest.fail(
        "No Compose CLI to validate docker-compose.yaml: neither `docker compose` (the docker CLI's compose "
        f"plugin) nor `docker-compose` is available. {INSTALL_HINT}"
    )


def _run_compose(args: list[str], env: dict[str, str], tmp_env_file: Path) -> subprocess.CompletedProcess:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    tmp_env_file.write_text("")
    cmd = [
        *compose_cli(),
        "--project-directory", str(ROOT),
        "-f", str(COMPOSE_FILE),
        "--env-file", str(tmp_env_file),
        *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**base_env, **env}, timeout=120)


@functools.cache
def _config(env_items: tuple[tuple[str, str], ...]) -> dict:
    """`config` with every profile on, so that profile services are listed by v2 as well as by v1."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = _run_compose(
            ["--profile", "gpu", "--profile", "minio", "config"], dict(env_items), Path(tmp) / "empty.env"
        )
    assert result.returncode == 0, (
        f"{' '.join(compose_cli())} rejected docker-compose.yaml:\n{result.stderr}\n{result.stdout}"
    )
    return yaml.safe_load(result.stdout)


def config(**env: str) -> dict:
    return _config(tuple(sorted(env.items())))


@pytest.fixture(scope="module")
def cfg() -> dict:
    return config()


@pytest.fixture(scope="module")
def services(cfg) -> dict:
    return cfg["services"]


def _raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _volume_mounts(service: dict) -> dict[str, str]:
    """target -> source, from v1's short form ("src:dst:rw") or v2's long form."""
    mounts = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            mounts[parts[1]] = parts[0]
        else:
            mounts[vol["target"]] = vol.get("source", "")
    return mounts


def _published_targets(service: dict) -> set[int]:
    targets = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            targets.add(int(port["target"]))
        else:
            targets.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return targets


def _queues(service: dict) -> set[str]:
    command = service["command"]
    command = shlex.split(command) if isinstance(command, str) else list(command)
    assert command[:3] == ["airflow", "celery", "worker"], command
    for i, arg in enumerate(command):
        if arg == "--queues":
            return set(command[i + 1].split(","))
        if arg.startswith("--queues="):
            return set(arg.split("=", 1)[1].split(","))
    raise AssertionError(f"no --queues in {command}")


def _healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


# --- the compose file --------------------------------------------------------------------------------------


def test_compose_cli_accepts_the_file():
    version = subprocess.run([*compose_cli(), "version"], capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    assert config()["services"], "empty configuration"


def test_required_services_and_profiles(services):
    assert REQUIRED_SERVICES <= set(services), f"missing: {REQUIRED_SERVICES - set(services)}"
    without_profile = {name for name, svc in services.items() if not svc.get("profiles")}
    assert without_profile == DEFAULT_SERVICES
    assert services["airflow-worker-gpu"]["profiles"] == ["gpu"]
    for name in ("minio", "minio-init"):
        assert services[name]["profiles"] == ["minio"], name
    # Nothing that starts by default waits for a profile service (compose would refuse to start it).
    for name in DEFAULT_SERVICES:
        assert not set(services[name].get("depends_on", {})) & {"minio", "minio-init", "airflow-worker-gpu"}


def test_every_long_running_service_has_a_healthcheck_and_restarts(services):
    for name, svc in services.items():
        if name in ONE_SHOT_SERVICES:
            assert svc.get("restart", "no") == "no", name
            continue
        hc = svc.get("healthcheck")
        enabled = hc and not hc.get("disable") and hc.get("test") not in (None, ["NONE"])
        assert enabled, f"{name}: no healthcheck"
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name}: restart {svc.get('restart')!r}"


def test_airflow_services_wait_for_their_dependencies(services):
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in ("airflow-worker-cpu", "airflow-worker-gpu"):
        assert services[name]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_apiserver_port_and_health_endpoint(services):
    api = services["airflow-apiserver"]
    assert 8080 in _published_targets(api)
    assert "http://localhost:8080/api/v2/monitor/health" in _healthcheck_text(api)
    assert "8974/health" in _healthcheck_text(services["airflow-scheduler"])


def test_workers_listen_on_their_queues(services):
    cpu, gpu = services["airflow-worker-cpu"], services["airflow-worker-gpu"]
    assert _queues(cpu) == {"default", "cpu"}
    assert _queues(gpu) == {"gpu"}
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert "deploy" not in cpu
    # Two images from one Dockerfile: distinct names, or one build would overwrite the other.
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert cpu["image"] != gpu["image"]
    for name in AIRFLOW_SERVICES - {"airflow-worker-gpu"}:
        assert services[name]["image"] == cpu["image"], name


def test_airflow_environment(services):
    env = {name: services[name]["environment"] for name in AIRFLOW_SERVICES}
    for name, e in env.items():
        assert e["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert e["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert e["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql"), name
        assert e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == EXECUTION_API, name
        assert e["AIRFLOW__API_AUTH__JWT_SECRET"], name
        assert e["LIGHTLY_ARTIFACTS_ROOT"], name
    # One metadata DB, one store, one JWT secret for all of them.
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "LIGHTLY_STORE_URL", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert len({e[key] for e in env.values()}) == 1, key


def test_store_and_metadata_are_different_databases(services):
    e = services["airflow-scheduler"]["environment"]
    meta = make_url(e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    store = make_url(e["LIGHTLY_STORE_URL"])
    assert meta.get_backend_name() == store.get_backend_name() == "postgresql"
    assert meta.host == store.host == "postgres"
    assert meta.database != store.database
    assert meta.username != store.username, "the store should have its own role"
    assert make_url(e["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")).database == meta.database


def test_settings_come_from_the_environment():
    custom = config(
        AIRFLOW_JWT_SECRET="s3cret-from-env",
        LIGHTLY_STORE_DB="store_x",
        LIGHTLY_STORE_USER="store_user_x",
        LIGHTLY_ARTIFACTS_ROOT="s3://my-bucket/artifacts",
        AIRFLOW_CONN_AWS_DEFAULT="aws://key:secret@/?region_name=eu-west-1",
    )["services"]
    for name in AIRFLOW_SERVICES:
        e = custom[name]["environment"]
        assert e["AIRFLOW__API_AUTH__JWT_SECRET"] == "s3cret-from-env"
        assert e["LIGHTLY_ARTIFACTS_ROOT"] == "s3://my-bucket/artifacts"
        assert e["AIRFLOW_CONN_AWS_DEFAULT"] == "aws://key:secret@/?region_name=eu-west-1"
        store = make_url(e["LIGHTLY_STORE_URL"])
        assert (store.database, store.username) == ("store_x", "store_user_x")
    pg = custom["postgres"]["environment"]
    assert (pg["LIGHTLY_STORE_DB"], pg["LIGHTLY_STORE_USER"]) == ("store_x", "store_user_x")


def test_cloud_connections_are_not_hard_coded(services):
    raw_env = _raw()["x-airflow-common"]["environment"]
    for key in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "AIRFLOW_CONN_WASB_DEFAULT"):
        assert key in raw_env and raw_env[key] is None, f"{key} must be passed through from .env, not set"
        for name in AIRFLOW_SERVICES:
            assert services[name]["environment"].get(key) is None, (name, key)
    minio_conn = json.loads(services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_MINIO"])
    assert minio_conn["extra"]["endpoint_url"] == "http://minio:9000"


def test_named_volumes(cfg, services):
    assert {"postgres-db-volume", "lightly-artifacts"} <= set(cfg["volumes"])
    assert _volume_mounts(services["postgres"])["/var/lib/postgresql/data"] == "postgres-db-volume"
    for name in AIRFLOW_SERVICES:
        artifacts_root = services[name]["environment"]["LIGHTLY_ARTIFACTS_ROOT"]
        assert artifacts_root.startswith("file://"), artifacts_root
        assert _volume_mounts(services[name])[artifacts_root.removeprefix("file://")] == "lightly-artifacts"


def test_postgres_init_creates_the_store_database(services):
    pg = services["postgres"]
    init_mounts = {
        target: source
        for target, source in _volume_mounts(pg).items()
        if target.startswith("/docker-entrypoint-initdb.d/")
    }
    assert len(init_mounts) == 1, init_mounts
    script = Path(next(iter(init_mounts.values())))
    assert script.resolve() == ROOT / "docker/postgres/init-lightly-store.sh"
    assert os.access(script, os.X_OK)
    assert re.search(r"CREATE DATABASE\b", script.read_text())
    airflow_env = services["airflow-scheduler"]["environment"]
    store = make_url(airflow_env["LIGHTLY_STORE_URL"])
    meta = make_url(airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    env = pg["environment"]
    assert (env["LIGHTLY_STORE_DB"], env["LIGHTLY_STORE_USER"], env["LIGHTLY_STORE_PASSWORD"]) == (
        store.database,
        store.username,
        store.password,
    )
    assert env["POSTGRES_DB"] == meta.database


def test_postgres_init_script_against_a_real_server(tmp_path):
    """Runs the init script as the postgres image does, on a throwaway PostgreSQL 16 (pgserver)."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver comes with requirements-dev.txt")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE airflow;")
        socket_dir = make_url(server.get_uri()).query["host"]
        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": socket_dir,
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "airflow",
            "LIGHTLY_STORE_DB": "lightly_store",
            "LIGHTLY_STORE_USER": "lightly",
            "LIGHTLY_STORE_PASSWORD": "it's a 'secret'",
        }
        result = subprocess.run(
            [str(ROOT / "docker/postgres/init-lightly-store.sh")], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        owner = server.psql(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'lightly_store';"
        )
        assert "lightly" in owner
        import sqlalchemy as sa

        store = sa.create_engine(f"postgresql+psycopg2://lightly@/lightly_store?host={socket_dir}")
        with store.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (x int)"))
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "lightly_store"
        store.dispose()
        other = sa.create_engine(f"postgresql+psycopg2://lightly@/airflow?host={socket_dir}")
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            other.connect()
        other.dispose()
    finally:
        server.cleanup()


# --- the image ---------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_user_and_variant():
    instructions = _dockerfile_instructions()
    args = {}
    for kw, rest in instructions:
        if kw == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0].split()[0])
    assert base.startswith("python:3.11-slim"), base
    tag = base.split("@")[0].partition(":")[2]
    assert "@sha256:" in base or (tag and tag != "latest" and re.search(r"\d", tag)), f"unpinned base {base}"
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert args.get("TORCH_VARIANT") == "cpu"
    assert args.get("AIRFLOW_UID") == "50000"
    envs = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "AIRFLOW_HOME=/opt/airflow" in envs
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "install-python-deps.sh" in runs and "${TORCH_VARIANT}" in runs
    copies = " ".join(rest for kw, rest in instructions if kw == "COPY")
    for needed in ("requirements.txt", "dags/", "plugins/", "lightly_tasks/", "pyproject.toml"):
        assert needed in copies, needed


def test_dockerfile_copies_exist_and_pass_dockerignore():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for kw, rest in _dockerfile_instructions():
        if kw != "COPY":
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
            top = Path(source).parts[0]
            allowed_here = top in allowed or source.rstrip("/") in allowed
            assert allowed_here, f"COPY {source}: excluded by .dockerignore"


def _deps(variant: str) -> list[str]:
    script = ROOT / "docker/install-python-deps.sh"
    result = subprocess.run(["sh", str(script), variant, "--print"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _lock_pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} not in requirements.txt")


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_image_requirements_per_torch_variant(variant):
    pins = dict(line.split("==", 1) for line in _deps(variant))
    lines = _deps(variant)
    assert len(pins) == len(lines), "a package pinned twice"
    assert {"apache-airflow-providers-celery", "redis", "asyncpg"} <= set(pins)
    assert pins["apache-airflow"] == _lock_pin("apache-airflow")
    if variant == "cpu":
        assert pins["torch"] == _lock_pin("torch") + "+cpu"
        assert pins["torchvision"] == _lock_pin("torchvision") + "+cpu"
        leftovers = [n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
        assert not leftovers, leftovers
        assert "faiss-cpu" in pins
    else:
        assert pins["torch"] == _lock_pin("torch")
        assert pins["faiss-gpu"] and "faiss-cpu" not in pins


def test_install_python_deps_rejects_an_unknown_variant():
    result = subprocess.run(
        ["sh", str(ROOT / "docker/install-python-deps.sh"), "rocm", "--print"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "cpu or cuda" in result.stderr
