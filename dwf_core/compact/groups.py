"""Remove dead channels across layer dependencies with Torch-Pruning's dependency graph (DepGraph).

Torch-Pruning finds which channels are coupled (a conv's outputs, its BatchNorm, the next layers' inputs, every
branch of a residual add or a concatenation, the columns a flatten feeds into a Linear) and removes them
physically; it does not know which ones are dead. A channel of a group is dead when removing it keeps the
function exactly:

- *unread*: every layer that reads it (Linear/conv input) has zero weights for it, or
- *constant*: every layer that writes it (Linear/conv output, depthwise filter) has zero weights for it, so it
  carries only biases; each reader then gets its measured value folded into the reader's bias. A zero-padded
  Conv2d sees the constant only inside the image: its contribution is then a fixed map, added to the conv's
  output (``OffsetConv2d``); other padded convs keep such a channel.

Groups holding anything else (LayerNorm, attention, grouped convs, the model's own inputs or outputs) are left
whole; the caller checks the final model against the original anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from dwf_core.compact.inputs import OffsetConv2d, add_output_offset
from dwf_core.compact.stats import input_ranges

Role = Literal["writer", "reader", "depthwise", "pass"]
_PASS_TYPES = {OPTYPE.BN, OPTYPE.ELEMENTWISE, OPTYPE.RESHAPE, OPTYPE.CONCAT, OPTYPE.SPLIT}
_LAYER_TYPES = {OPTYPE.CONV, OPTYPE.LINEAR}
MAX_ROUNDS = 20
# Reshape nodes a group may pass through (a flatten into a Linear is one). Torch-Pruning maps every channel index
# through each reshape, multiplying the index lists by the reshape's stride, and revisits nodes whose index lists
# changed: through the token/head reshapes of an exported attention block (43 of them in a 2-layer ViT from
# onnx2torch) that grew past 12 GB of index objects before one group was done.
MAX_GROUP_RESHAPES = 4
_SCREEN_TYPES = _PASS_TYPES | _LAYER_TYPES | {OPTYPE.DEPTHWISE_CONV}


@dataclass
class _Member:
    """One entry of a group: a module, what it does with the group's channels, and its indices per root channel.

    ``zero[i]``: for a writer or depthwise conv, whether output channel ``i``'s weights are all zero; for a
    reader, whether input column/channel ``i``'s are.
    """

    module: nn.Module
    role: Role
    by_root: dict[int, list[int]]
    zero: list[bool]


@dataclass
class ChannelReport:
    """What the dead-channel pass removed and what it had to leave."""

    rounds: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # root layer -> output channels removed
    folded: int = 0  # channels whose constant went into a reader's bias
    skipped: Counter[str] = field(default_factory=Counter)  # why groups were left whole

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "rounds": self.rounds,
            "removed_channels": dict(self.removed),
            "folded_channels": self.folded,
            "groups_left_whole": dict(self.skipped),
        }


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example`` (Torch-Pruning follows autograd, so gradients must be on)."""
    for param in model.parameters():
        param.requires_grad_(True)
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _boundary(graph: tp.DependencyGraph) -> tuple[set[Any], set[Any]]:
    """Nodes whose channels are the model's outputs: (pass-through nodes, layers whose outputs are).

    Found by walking back from the graph's ends through everything but Linear/conv layers. The model's inputs
    need no such walk: they carry no gradient, so the traced graph never reaches them (a group coupled to them,
    as in ``x + conv(x)``, fails the caller's final check instead).
    """
    passing: set[Any] = set()
    out_layers: set[Any] = set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.type in _LAYER_TYPES:
            out_layers.add(node)  # its outputs are the model's; its input side stays free
            continue
        passing.add(node)
        stack.extend(node.inputs)
    return passing, out_layers


def _root_handler(graph: tp.DependencyGraph, module: nn.Module) -> Any:
    """The out-channel pruning function Torch-Pruning uses for ``module`` as a group's root, or None."""
    pruner = graph.get_pruner_of_module(module)
    if pruner is None or pruner.get_out_channels(module) is None:
        return None
    if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        return tp.pruner.function.prune_depthwise_conv_out_channels
    return pruner.prune_out_channels


def screen_group(graph: tp.DependencyGraph, module: nn.Module, handler: Any) -> str | None:
    """Why the group rooted at ``module`` would be left whole, found from node types alone, or None.

    Walks the same dependencies Torch-Pruning follows (a superset: it also drops branches whose index list
    becomes empty) without mapping any indices, so it costs one visit per (node, handler) pair. A group that
    reaches a node ``_members`` refuses, or more than ``MAX_GROUP_RESHAPES`` reshapes, is never expanded.
    """
    root = graph.module2node[module]
    stack: list[tuple[Any, Any]] = [(root, handler)]
    seen: set[tuple[Any, Any]] = set()
    reshapes: set[Any] = set()
    while stack:
        node, fn = stack.pop()
        if (node, fn) in seen:
            continue
        seen.add((node, fn))
        if node.type not in _SCREEN_TYPES:
            return f"unsupported {node.type.name}"
        if node.type == OPTYPE.RESHAPE:
            reshapes.add(node)
            if len(reshapes) > MAX_GROUP_RESHAPES:
                return f"more than {MAX_GROUP_RESHAPES} reshapes"
        stack.extend((dep.target, dep.handler) for dep in node.dependencies if dep.is_triggered_by(fn))
    return None


def screened_groups(graph: tp.DependencyGraph) -> list[Any | str]:
    """Every Linear/conv-rooted group of ``graph`` (as ``get_all_groups``), or for a group ``screen_group``
    refuses, the reason instead, without building it."""
    found: list[Any | str] = []
    visited: set[nn.Module] = set(graph.IGNORED_LAYERS_IN_TRACING)
    for module in list(graph.module2node):
        if not isinstance(module, (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)) or module in visited:
            continue
        handler = _root_handler(graph, module)
        if handler is None:
            continue
        reason = screen_group(graph, module, handler)
        if reason is not None:
            found.append(reason)
            visited.add(module)
            continue
        group = graph.get_pruning_group(module, handler, list(range(graph.get_out_channels(module))))
        visited.update(item.dep.target.module for item in group if graph.is_out_channel_pruning_fn(item.dep.handler))
        found.append(group)
    return found


def _role(graph: tp.DependencyGraph, item: Any) -> Role | str:
    """The member's role, or why the group cannot be handled."""
    node, module = item.dep.target, item.dep.target.module
    if node.type == OPTYPE.DEPTHWISE_CONV:
        return "depthwise"
    if node.type in _PASS_TYPES:
        return "pass"
    if node.type not in _LAYER_TYPES:
        return f"unsupported {node.type.name}"
    if isinstance(module, nn.modules.conv._ConvNd) and (module.transposed or module.groups != 1):
        return "grouped or transposed conv"
    return "writer" if graph.is_out_channel_pruning_fn(item.dep.handler) else "reader"


def _members(graph: tp.DependencyGraph, group: Any, boundary: tuple[set[Any], set[Any]]) -> list[_Member] | str:
    """The group's members, or why it is left whole."""
    passing, out_layers = boundary
    members: list[_Member] = []
    for item in group:
        node = item.dep.target
        role = _role(graph, item)
        if node in passing or (role == "writer" and node in out_layers):
            return "model input or output"
        if role not in ("writer", "reader", "depthwise", "pass"):
            return role
        by_root: dict[int, list[int]] = {}
        for idx, root in zip(item.idxs, item.root_idxs, strict=True):
            by_root.setdefault(int(root), []).append(int(idx))
        zero: list[bool] = []
        if role != "pass":
            weight = _weight(node.module)
            per = weight.transpose(0, 1) if role == "reader" else weight
            zero = (~per.reshape(per.shape[0], -1).ne(0).any(dim=1)).tolist()
        members.append(_Member(node.module, role, by_root, zero))  # type: ignore[arg-type]
    return members


def _weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight, detached."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight.detach()


def _fold_delta(reader: nn.Module, col: int, value: float, spatial: tuple[int, ...] | None) -> torch.Tensor | None:
    """What a constant ``value`` on input column/channel ``col`` adds to the reader's outputs: a vector (out,) when
    it is the same at every position, else, for a Conv2d, a map (out, H_out, W_out); None when neither works."""
    weight = _weight(reader)[:, col]
    if not isinstance(reader, nn.modules.conv._ConvNd):
        return weight * value
    if spatial is None:
        return None
    # Run the reader's own convolution (stride, padding mode, dilation) on the constant map, without bias.
    plane = torch.full((1, 1, *spatial), value, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        delta = reader._conv_forward(plane, weight.unsqueeze(1), None)[0]
    flat = delta.flatten(1)
    if bool((flat.amax(dim=1) - flat.amin(dim=1) <= 1e-6 * flat.abs().amax(dim=1).clamp(min=1.0)).all()):
        return flat[:, 0]
    return delta if type(reader) in (nn.Conv2d, OffsetConv2d) else None


def _plan_channel(
    members: list[_Member], root: int, ranges: dict[nn.Module, tuple[list[float | None], tuple[int, ...] | None]]
) -> list[tuple[nn.Module, torch.Tensor]] | None:
    """The bias updates that make root channel ``root`` removable ([] if none are needed), or None to keep it."""
    live_readers = [
        (m.module, col) for m in members if m.role == "reader" for col in m.by_root.get(root, []) if not m.zero[col]
    ]
    if not live_readers:
        return []
    writers = [m for m in members if m.role in ("writer", "depthwise")]
    if not writers or not all(m.zero[i] for m in writers for i in m.by_root.get(root, [])):
        return None
    folds: list[tuple[nn.Module, torch.Tensor]] = []
    for reader, col in live_readers:
        values, spatial = ranges.get(reader, ([], None))
        value = values[col] if col < len(values) else None
        delta = None if value is None else _fold_delta(reader, col, value, spatial)
        if delta is None:
            return None
        folds.append((reader, delta))
    return folds


def _fold(module: nn.Module, delta: torch.Tensor) -> None:
    """Add ``delta`` to the layer's bias (creating a zero bias where it had none) or, for a map, its output offset."""
    if delta.dim() > 1:
        add_output_offset(module, delta)  # type: ignore[arg-type]  # _fold_delta returns maps for Conv2d only
        return
    bias = module.bias
    base = bias.detach() if isinstance(bias, torch.Tensor) else torch.zeros_like(delta)
    module.bias = nn.Parameter(base + delta.to(base.dtype))


def _prune(graph: tp.DependencyGraph, module: nn.Module, handler: Any, idxs: list[int]) -> None:
    """Prune one group; output offsets (which Torch-Pruning does not know) lose the same channels."""
    group = graph.get_pruning_group(module, handler, idxs)
    shrink: list[tuple[OffsetConv2d, list[int]]] = [
        (item.dep.target.module, list(item.idxs))
        for item in group
        if isinstance(item.dep.target.module, OffsetConv2d) and graph.is_out_channel_pruning_fn(item.dep.handler)
    ]
    group.prune()
    for conv, gone in shrink:
        keep = [i for i in range(conv.output_offset.shape[0]) if i not in set(gone)]
        conv.output_offset = conv.output_offset[keep]


def remove_dead_channels(model: nn.Module, batches: Sequence[torch.Tensor]) -> ChannelReport:
    """Remove dead channels of ``model`` in place, repeating until a round removes nothing.

    Args:
        model: a plain (collapsed) module in eval mode.
        batches: inputs to trace with (the first) and to measure constant channels on (all); real samples
            and random ones, so a channel is called constant only if it was on both.

    Returns:
        What was removed, folded and left whole.
    """
    report = ChannelReport()
    while report.rounds < MAX_ROUNDS:
        report.rounds += 1
        graph = build_graph(model, batches[0])
        boundary = _boundary(graph)
        planned: list[tuple[Any, list[_Member]]] = []
        skipped: Counter[str] = Counter()
        for group in screened_groups(graph):
            members = group if isinstance(group, str) else _members(graph, group, boundary)
            if isinstance(members, str):
                skipped[members] += 1
            else:
                planned.append((group, members))
        report.skipped = skipped
        readers = [m.module for _, members in planned for m in members if m.role == "reader"]
        ranges = {m: (seen.constants(), seen.spatial) for m, seen in input_ranges(model, readers, batches).items()}
        prunes: list[tuple[nn.Module, Any, list[int]]] = []
        folds: list[tuple[nn.Module, torch.Tensor]] = []
        for group, members in planned:
            roots = sorted({r for m in members for r in m.by_root})
            dead: list[tuple[int, list[tuple[nn.Module, torch.Tensor]]]] = []
            for root in roots:
                plan = _plan_channel(members, root, ranges)
                if plan is not None:
                    dead.append((root, plan))
            if len(dead) == len(roots):
                dead = dead[:-1]  # keep one channel: empty tensors break exporters and runtimes
            if dead:
                head = group[0].dep
                prunes.append((head.target.module, head.handler, [root for root, _ in dead]))
                folds.extend(fold for _, plan in dead for fold in plan)
                report.folded += sum(1 for _, plan in dead if plan)
        if not prunes:
            break
        for module, delta in folds:  # before any pruning: the deltas are in today's column coordinates
            _fold(module, delta)
        for module, handler, idxs in prunes:
            name = graph._module2name.get(module, type(module).__name__)
            _prune(graph, module, handler, idxs)
            report.removed[name] = report.removed.get(name, 0) + len(idxs)
    return report
