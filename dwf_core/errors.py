"""Typed errors raised by dwf_core; the service maps each to an HTTP 4xx or a failed job with a reason."""

from __future__ import annotations


class DwfError(Exception):
    """Base of every error dwf_core raises on purpose.

    ``code`` is a stable machine-readable string, ``param`` names the offending input (a CLI flag, a
    job field, a file or a tensor name) so a user can tell what to fix.
    """

    code: str = "dwf_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def to_dict(self) -> dict[str, str | None]:
        """The error as the service's ``{code, message, param}`` object."""
        return {"code": self.code, "message": self.message, "param": self.param}


class ConfigError(DwfError):
    """A setting is out of range or inconsistent (depth, λ, threshold, include/exclude globs…)."""

    code = "invalid_config"


class ModelError(DwfError):
    """A model spec, architecture file or ONNX graph cannot be used."""

    code = "invalid_model"


class WeightsError(DwfError):
    """A weights file is malformed, unsafe or does not match the architecture."""

    code = "invalid_weights"


class DatasetError(DwfError):
    """A dataset file is malformed, too large or inconsistent."""

    code = "invalid_dataset"


class TrainingError(DwfError):
    """Training cannot continue (non-finite loss, incompatible checkpoint…)."""

    code = "training_failed"


class ExportError(DwfError):
    """An artifact cannot be written or verified."""

    code = "export_failed"
