"""Compact models: the collapsed sparse model rebuilt without its dead units, so it runs faster, not only smaller.

``compact_model`` builds it, ``save_compact``/``load_compact`` store and rebuild it (safetensors, no pickle),
``write_compact`` is the pipeline's step (fails soft: a model that cannot be compacted gets a reason instead).
"""

from dwf_core.compact.inputs import IndexedLinear
from dwf_core.compact.job import write_compact
from dwf_core.compact.model import CompactionSkipped, CompactResult, compact_model
from dwf_core.compact.spec import load_compact, save_compact, shrink_spec

__all__ = [
    "CompactResult",
    "CompactionSkipped",
    "IndexedLinear",
    "compact_model",
    "load_compact",
    "save_compact",
    "shrink_spec",
    "write_compact",
]
