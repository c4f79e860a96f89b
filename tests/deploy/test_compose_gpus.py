"""The compose worker given N GPUs for multi-GPU (DDP) jobs: DWF_WORKER_GPUS and DWF_WORKER_SHM_SIZE in .env."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.test_compose import _config, _docker_compose, _example_env


def test_a_worker_with_four_gpus_and_a_larger_shm(tmp_path: Path) -> None:
    exe = _docker_compose()
    env = _example_env(tmp_path)
    env.write_text(env.read_text() + "DWF_WORKER_GPUS=0,1,2,3\nDWF_WORKER_SHM_SIZE=16gb\n")
    proc = _config(exe, env)
    assert proc.returncode == 0, proc.stderr
    worker = yaml.safe_load(proc.stdout)["services"]["worker"]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert worker["shm_size"] == "16gb"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all"


def test_the_default_worker_has_one_gpu_and_8gb_of_shm(tmp_path: Path) -> None:
    proc = _config(_docker_compose(), _example_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    worker = yaml.safe_load(proc.stdout)["services"]["worker"]
    assert (worker["environment"]["CUDA_VISIBLE_DEVICES"], worker["shm_size"]) == ("0", "8gb")
