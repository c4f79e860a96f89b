"""Model intake: the model zoo (with torchvision and timm architectures), safe safetensors weight loading, ONNX
import and transformers classifiers from a config.json."""

from dwf_core.intake.formats import detect_model_format, refuse_unsafe
from dwf_core.intake.hf_source import build_hf_model
from dwf_core.intake.limits import ModelLimits
from dwf_core.intake.onnx_load import convert_onnx_model, load_onnx, read_onnx_model, verify_onnx_conversion
from dwf_core.intake.onnx_verify import compare_with_onnxruntime
from dwf_core.intake.safetensors_header import read_safetensors_header
from dwf_core.intake.timm_source import list_timm_models
from dwf_core.intake.weights import load_weights
from dwf_core.intake.zoo import build_model, list_torchvision_models, list_zoo

__all__ = [
    "ModelLimits",
    "build_hf_model",
    "build_model",
    "compare_with_onnxruntime",
    "convert_onnx_model",
    "detect_model_format",
    "list_timm_models",
    "list_torchvision_models",
    "list_zoo",
    "load_onnx",
    "load_weights",
    "read_onnx_model",
    "read_safetensors_header",
    "refuse_unsafe",
    "verify_onnx_conversion",
]
