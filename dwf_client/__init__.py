"""Python SDK of the dwf job service: upload, submit, follow, cancel and download DWF sparsification jobs.

from dwf_client import Client

with Client.from_env() as client:
    job = client.submit("lenet_300_100", "mnist.npz", depth=3, target_sparsity=0.9, epochs=5)
    job.wait(on_progress=lambda p: print(p.epoch, p.loss, p.accuracy, p.compression_ratio))
    job.download("out/")
"""

from dwf_client.client import Client, Job
from dwf_client.config import ConfigError
from dwf_client.errors import DwfApiError, DwfConnectionError, DwfError
from dwf_client.models import (
    Artifact,
    DatasetRef,
    DwfMethod,
    Event,
    FileObject,
    JobContinue,
    JobCreate,
    JobData,
    JobError,
    JobProgress,
    ModelRef,
    Progress,
)
from dwf_client.sweeps import Sweep, SweepChild, SweepData

__all__ = [
    "Artifact",
    "Client",
    "ConfigError",
    "DatasetRef",
    "DwfApiError",
    "DwfConnectionError",
    "DwfError",
    "DwfMethod",
    "Event",
    "FileObject",
    "Job",
    "JobContinue",
    "JobCreate",
    "JobData",
    "JobError",
    "JobProgress",
    "ModelRef",
    "Progress",
    "Sweep",
    "SweepChild",
    "SweepData",
]
