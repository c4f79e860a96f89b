"""docker-compose.yml, validated by Debian's docker-compose 1.29 `config` (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"postgres", "redis", "minio", "createbuckets", "api", "worker", "flower"}


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if _on_ci():
            pytest.fail("docker-compose is missing on CI: scripts/test.sh installs it (apt-get install docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose, or run scripts/test.sh as root)")
    return exe


def _example_env(tmp_path: Path) -> Path:
    """.env.example as the env file: its placeholders are what a fresh checkout has (never a developer's .env)."""
    env = tmp_path / "compose.env"
    shutil.copyfile(ROOT / ".env.example", env)
    return env


def _example_values() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), flags=re.M))


def _config(exe: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    # Interpolation must come from the env file alone, not from this process's environment.
    clean = {k: v for k, v in os.environ.items() if not re.match(r"^(DWF_|POSTGRES_|MINIO_|FLOWER_)", k)}
    return subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it."""
    exe = _docker_compose()
    proc = _config(exe, _example_env(tmp_path_factory.mktemp("compose")))
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    parsed: dict[str, Any] = yaml.safe_load(proc.stdout)
    return parsed


def test_services_present(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


def test_redis_is_durable_and_never_evicts(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"


def test_worker_reserves_one_gpu_and_consumes_both_queues(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert "gpus" not in worker  # the service-level key docker-compose 1.29 rejects
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    # All host GPUs mapped in, CUDA_VISIBLE_DEVICES picks the worker's (one by default; DWF_WORKER_GPUS for DDP jobs).
    assert device["count"] == "all"
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert device["capabilities"] == ["gpu"]
    command = " ".join(worker["command"])
    assert "-A worker.celery_app worker" in command
    assert "-Q validate,train" in command
    assert "--concurrency 1" in command
    assert "--prefetch-multiplier 1" in command
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"


@pytest.mark.parametrize("name", ["postgres", "redis", "minio", "api", "worker", "flower"])
def test_long_running_services_have_healthchecks(config: dict[str, Any], name: str) -> None:
    healthcheck = config["services"][name]["healthcheck"]
    assert healthcheck["test"], name
    assert not healthcheck.get("disable", False), name


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_healthy_dependencies(config: dict[str, Any], name: str) -> None:
    depends = config["services"][name]["depends_on"]
    for dep in ("postgres", "redis", "minio"):
        assert depends[dep]["condition"] == "service_healthy", (name, dep)
    assert depends["createbuckets"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_point_at_the_compose_backends(config: dict[str, Any], name: str) -> None:
    env = config["services"][name]["environment"]
    assert env["DWF_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["DWF_DATABASE_URL"].endswith("@postgres:5432/dwf")
    assert env["DWF_BROKER_URL"] == "redis://redis:6379/0"
    assert env["DWF_STORAGE"] == "s3"
    assert env["DWF_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["DWF_S3_BUCKET"] == "dwf"
    example = _example_values()
    assert env["DWF_S3_ACCESS_KEY_ID"] == example["DWF_S3_ACCESS_KEY_ID"]
    assert env["DWF_S3_SECRET_ACCESS_KEY"] == example["DWF_S3_SECRET_ACCESS_KEY"]
    assert example["POSTGRES_PASSWORD"] in env["DWF_DATABASE_URL"]


def test_api_publishes_8000_and_runs_migrations_first(config: dict[str, Any]) -> None:
    api = config["services"]["api"]
    assert any(int(p["target"]) == 8000 and int(p["published"]) == 8000 for p in api["ports"])
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    entrypoint = (ROOT / "docker" / "entrypoint-api.sh").read_text()
    assert "python -m dwf_service.migrate" in entrypoint
    assert entrypoint.index("dwf_service.migrate") < entrypoint.index("exec uvicorn")


def test_data_services_keep_their_data_in_volumes(config: dict[str, Any]) -> None:
    assert {"pgdata", "redisdata", "miniodata"} <= set(config["volumes"])
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data"), ("minio", "/data")):
        assert any(str(v).split(":")[1] == path for v in config["services"][name]["volumes"]), name


def test_missing_secret_is_refused(tmp_path: Path) -> None:
    """Without the env file's secrets, `config` fails naming the variable instead of using an empty password."""
    exe = _docker_compose()
    env = tmp_path / "partial.env"
    env.write_text("MINIO_ROOT_USER=u\n")
    proc = _config(exe, env)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr or "MINIO_ROOT_PASSWORD" in proc.stderr


def test_no_real_secrets_committed() -> None:
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.search(r"(PASSWORD|SECRET|API_KEY|BASIC_AUTH)=", line):
            assert "CHANGE-ME" in line, line
