"""A run's report: ``report.html`` (self-contained, PNGs embedded as base64) and ``plots/*.png`` in its output folder.

Built from the ``metrics.json`` that ``dwf_core.pipeline.run`` writes (the per-epoch ``history``, ``layers``, the
settings in ``config``, the ``artifacts`` and, when present, the accuracy–CR ``frontier``). Charts are drawn with
matplotlib's Agg canvas directly (no pyplot state), so this is safe in a worker thread and needs no display.

The file names are fixed (every plot is always drawn, with a "no data" note when its data is missing), so the
service can register ``REPORT_ARTIFACTS`` as job artifacts: flat names, the plots as ``plot-<name>.png``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dwf_core.inference_html import inference_html

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"
PLOT_NAMES = ("loss", "accuracy", "compression", "layers", "frontier")
# Artifact name → path relative to the output folder (artifact names are flat: they are URL path segments).
REPORT_FILES: dict[str, str] = {
    REPORT_NAME: REPORT_NAME,
    **{f"plot-{name}.png": f"{PLOTS_DIR}/{name}.png" for name in PLOT_NAMES},
}
REPORT_ARTIFACTS = tuple(REPORT_FILES)

_BLUE, _ORANGE, _GREEN, _RED, _GREY = "#1f6feb", "#d9730d", "#2da44e", "#cf222e", "#6e7781"


def report_artifacts(out_dir: Path) -> dict[str, Path]:
    """The report files present in ``out_dir``: artifact name → path."""
    found = {name: out_dir / rel for name, rel in REPORT_FILES.items()}
    return {name: path for name, path in found.items() if path.is_file()}


# ------------------------------------------------------------------------------------------------ number helpers


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON null, missing, NaN, strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epoch, value) of ``key`` over the epochs that have a finite value for it.

    The x value is the epoch's position in the run (1, 2, …): fine-tuning epochs after the collapse
    (``phase: "finetune"``, numbered from 1 again) follow the training epochs.
    """
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(history):
        value = _num(row.get(key))
        if value is not None:
            xs.append(float(i + 1))
            ys.append(value)
    return xs, ys


def _mark_finetune(ax: Axes, history: Sequence[dict[str, Any]]) -> None:
    """Shade the fine-tuning epochs (after the collapse), if any."""
    tuned = [i + 1 for i, row in enumerate(history) if row.get("phase") == "finetune"]
    if tuned:
        ax.axvspan(min(tuned) - 0.5, max(tuned) + 0.5, color=_GREY, alpha=0.12, linewidth=0)
        ax.text(min(tuned) - 0.4, 0.97, "fine-tune", transform=ax.get_xaxis_transform(), va="top", fontsize=8)


def _pct(value: Any, digits: int = 2) -> str:
    number = _num(value)
    return "—" if number is None else f"{100 * number:.{digits}f}%"


def _ratio(value: Any) -> str:
    number = _num(value)
    return "—" if number is None else f"{number:,.1f}×"


def _size(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(number) < 1024 or unit == "GiB":
            return f"{number:,.0f} {unit}" if unit == "B" else f"{number:,.1f} {unit}"
        number /= 1024
    return f"{number:,.1f} GiB"  # pragma: no cover - the loop always returns


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


# ------------------------------------------------------------------------------------------------------- plots


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in metrics.json", ha="center", va="center", transform=ax.transAxes, color=_GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_lines(history: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str, str]], title: str) -> Figure:
    fig, ax = _figure()
    drawn = False
    for key, label, color in keys:
        xs, ys = _series(history, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=label, color=color)
            drawn = True
    ax.set_title(title)
    if drawn:
        ax.set_xlabel("epoch")
        _mark_finetune(ax, history)
        ax.legend(loc="best")
    else:
        _no_data(ax, "per-epoch history")
    return fig


def _plot_loss(metrics: dict[str, Any]) -> Figure:
    keys = (("train_loss", "train loss", _BLUE), ("val_loss", "val loss", _ORANGE))
    return _plot_lines(metrics.get("history") or [], keys, "Loss per epoch")


def _plot_accuracy(metrics: dict[str, Any]) -> Figure:
    keys = (("train_accuracy", "train accuracy", _BLUE), ("val_accuracy", "val accuracy", _ORANGE))
    return _plot_lines(metrics.get("history") or [], keys, "Accuracy per epoch")


def _plot_compression(metrics: dict[str, Any]) -> Figure:
    """Per-epoch CR and sparsity as the trainer measures them (weights below its monitor threshold), with the
    final cut's CR marked: a target-sparsity run reads about 1× every epoch and its cut then gives the target."""
    history = metrics.get("history") or []
    fig, ax = _figure()
    monitor = next((t for row in history if (t := _num(row.get("monitor_threshold"))) is not None), None)
    below = f"|w| < {monitor:g}" if monitor is not None else "the monitor threshold"
    ax.set_title(f"Compression ratio and sparsity per epoch at {below}\n(monitor, not the final cut)")
    xs, ys = _series(history, "compression_ratio")
    sx, sy = _series(history, "sparsity")
    if not xs and not sx:
        _no_data(ax, "per-epoch history")
        return fig
    ax.set_xlabel("epoch")
    _mark_finetune(ax, history)
    final = _num(metrics.get("compression_ratio"))
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, color=_GREEN, label="monitor CR")
        ax.set_ylabel("compression ratio (×)", color=_GREEN)
        if final is not None:
            ax.axhline(final, color=_RED, linestyle=":", linewidth=1.5, label=f"final cut {_ratio(final)}")
        shown = [*ys, final] if final is not None else ys
        if min(shown) > 0 and max(shown) / min(shown) > 20:
            ax.set_yscale("log")
        ax.legend(loc="center right", fontsize=8)
    if sx:
        ax2 = ax.twinx()
        ax2.plot(sx, [100 * v for v in sy], linestyle="--", color=_GREY, label="sparsity")
        ax2.set_ylabel(f"sparsity at {below} (%)", color=_GREY)
        ax2.set_ylim(0, 100)
    return fig


def _plot_layers(metrics: dict[str, Any]) -> Figure:
    layers = [layer for layer in metrics.get("layers") or [] if _num(layer.get("sparsity")) is not None]
    height = max(2.4, 0.8 + 0.32 * len(layers))
    fig, ax = _figure(6.4, min(height, 24.0))
    ax.set_title("Sparsity per layer")
    if not layers:
        _no_data(ax, "per-layer counts")
        return fig
    names = [str(layer.get("name", "?")) for layer in layers]
    values = [100 * float(layer["sparsity"]) for layer in layers]
    positions = list(range(len(layers)))
    ax.barh(positions, values, color=_BLUE)
    ax.set_yticks(positions, labels=names, fontsize=8 if len(layers) < 30 else 6)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (%)")
    for pos, value in zip(positions, values, strict=True):
        ax.text(min(value, 99.0), pos, f"{value:.1f}%", va="center", ha="right", fontsize=7, color="white")
    return fig


def _frontier_points(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    frontier = metrics.get("frontier")
    if not isinstance(frontier, list):
        return []
    return [p for p in frontier if isinstance(p, dict) and _num(p.get("compression_ratio")) is not None]


def _plot_frontier(metrics: dict[str, Any]) -> Figure:
    fig, ax = _figure()
    ax.set_title("Accuracy vs compression ratio")
    points = _frontier_points(metrics)
    for key, label, color in (("test_accuracy", "test", _BLUE), ("val_accuracy", "val", _ORANGE)):
        pts = [(float(p["compression_ratio"]), _num(p.get(key))) for p in points]
        xy = [(x, 100 * y) for x, y in pts if y is not None]
        if xy:
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", linestyle=":", color=color, label=label)
    cr, acc = _num(metrics.get("compression_ratio")), _num(metrics.get("test_accuracy"))
    if cr is not None and acc is not None:
        ax.scatter([cr], [100 * acc], s=120, marker="*", color=_RED, zorder=5, label="this model (test)")
    if not points and (cr is None or acc is None):
        _no_data(ax, "frontier")
        return fig
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (×, log scale)")
    ax.set_ylabel("accuracy (%)")
    if not points:
        ax.text(0.02, 0.04, "no frontier sweep in metrics.json", transform=ax.transAxes, fontsize=8, color=_GREY)
    ax.legend(loc="best")
    return fig


_PLOTTERS: dict[str, Callable[[dict[str, Any]], Figure]] = {
    "loss": _plot_loss,
    "accuracy": _plot_accuracy,
    "compression": _plot_compression,
    "layers": _plot_layers,
    "frontier": _plot_frontier,
}


def write_plots(metrics: dict[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Draw every plot of ``PLOT_NAMES`` into ``plots_dir/<name>.png``; returns name → path."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in PLOT_NAMES:
        fig = _PLOTTERS[name](metrics)
        path = plots_dir / f"{name}.png"
        fig.savefig(path, format="png")
        paths[name] = path
    return paths


# -------------------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.sub{color:#6e7781;margin-top:0}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #d0d7de;border-radius:8px;padding:.6rem 1rem;
min-width:150px}.card b{display:block;font-size:1.3rem}.card span{color:#6e7781;font-size:.8rem}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1rem}
.plots img{width:100%;border:1px solid #d0d7de;border-radius:6px}code{font-size:.85rem}
"""


def _esc(value: Any) -> str:
    return html.escape(_text(value))


def _table(rows: Sequence[tuple[str, str]], header: tuple[str, str] | None = None) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def _card(label: str, value: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _img(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(f"{name} plot")
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>'


def _settings_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    config = metrics.get("config") or {}
    model = metrics.get("model") or {}
    dataset = metrics.get("dataset") or {}
    rows: list[tuple[str, str]] = [
        ("model", _esc(model.get("spec"))),
        ("model source", _esc(model.get("source"))),
        ("dataset", _esc(dataset.get("source"))),
        ("method", _esc(metrics.get("method", config.get("method")))),
    ]
    rows += [(str(key), _esc(value)) for key, value in sorted(config.items())]
    return rows


def _target_note(met: Any) -> str:
    """Said next to the achieved sparsity when a run missed its target's promised band."""
    if met is False:
        return " (outside the target's band: training pruned past it, see metrics.json target_met)"
    return ""


def _restarts_note(restarts: Any) -> str:
    """Said next to the final λ when training started over with a lower λ (dwf_core.train, over-pruning)."""
    if not isinstance(restarts, list) or not restarts:
        return ""
    steps = ", ".join(
        f"{_esc(r.get('lam'))} at epoch {_esc(r.get('epoch'))} ({_pct(r.get('dead_sparsity'))} dead)"
        for r in restarts
        if isinstance(r, dict)
    )
    return f" (after {len(restarts)} restart(s) with a lower λ; abandoned: {steps})"


def _divergence_note(restarts: Any) -> str:
    """What each restart after a non-finite loss or a model stuck on one class changed (dwf_core.divergence), for
    the "training restarts" row."""
    if not isinstance(restarts, list):
        return ""
    parts = []
    for r in restarts:
        if not isinstance(r, dict):
            continue
        changes = []
        if r.get("max_grad_norm_before") is None and r.get("max_grad_norm_after") is not None:
            changes.append(f"gradient norm clipped at {_esc(r.get('max_grad_norm_after'))}")
        if r.get("lr_after") != r.get("lr_before"):
            changes.append(f"peak LR {_esc(r.get('lr_before'))} → {_esc(r.get('lr_after'))}")
        if "lam_after" in r:
            changes.append(f"λ {_esc(r.get('lam_before'))} → {_esc(r.get('lam_after'))}")
        if r.get("reason") == "one_class":
            where = f"one class for every validation example after epoch {_esc(r.get('epoch'))}"
        else:
            where = f"loss {_esc(r.get('loss'))} at epoch {_esc(r.get('epoch'))}, step {_esc(r.get('step'))}"
        parts.append(f"{where}: {', '.join(changes) or 'same setting'}")
    one_class = any(isinstance(r, dict) and r.get("reason") == "one_class" for r in restarts)
    why = "a non-finite loss or a one-class model" if one_class else "a non-finite loss"
    return f"{len(parts)} after {why} ({'; '.join(parts)})" if parts else ""


def _probe_note(record: dict[str, Any]) -> str:
    """The LR probe's settings and scores, and what training used (dwf_core.lr_probe)."""
    tried = []
    for r in record.get("rungs") or []:
        if not isinstance(r, dict):
            continue
        clip = "" if r.get("max_grad_norm") is None else f", clip {_esc(r.get('max_grad_norm'))}"
        score = (
            f"failed: {_esc(r.get('failed'))}" if r.get("failed") else f"val loss {_num(r.get('val_loss')) or 0.0:.3g}"
        )
        tried.append(f"LR {_num(r.get('lr')) or 0.0:.3g}{clip} ({score})")
    clip = (
        "" if record.get("max_grad_norm") is None else f", gradient norm clipped at {_esc(record.get('max_grad_norm'))}"
    )
    return (
        f"peak LR {_num(record.get('lr')) or 0.0:.3g}{clip}; {_esc(record.get('steps'))} steps each: {'; '.join(tried)}"
    )


def _coverage_note(parameters: Any) -> str:
    """Trainable and factorized shares of the model's parameters, with the warning when few can train."""
    if not isinstance(parameters, dict):
        return "—"
    note = (
        f"{_pct(parameters.get('trainable_share'))}, {_pct(parameters.get('factorized_share'))} "
        f"of {_esc(parameters.get('total'))}"
    )
    warning = parameters.get("warning")
    return note + (f" <strong>(warning: {_esc(warning)})</strong>" if warning else "")


def _results_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    target = _num(metrics.get("target_sparsity"))
    divergence = _divergence_note(metrics.get("divergence_restarts"))
    return [
        ("requested sparsity", _pct(target) if target is not None else "— (λ given)"),
        ("achieved sparsity", _pct(metrics.get("sparsity")) + _target_note(metrics.get("target_met"))),
        ("compression ratio", _ratio(metrics.get("compression_ratio"))),
        ("non-zeros / weights", f"{_text(metrics.get('nnz'))} / {_text(metrics.get('total'))}"),
        ("sparsity, all parameters", _pct(metrics.get("sparsity_all"))),
        ("parameters: trainable, factorized", _coverage_note(metrics.get("parameters"))),
        ("test accuracy, factorized", _pct(metrics.get("factorized_test_accuracy"))),
        ("test accuracy, collapsed", _pct(metrics.get("test_accuracy"))),
        ("val accuracy, factorized", _pct(metrics.get("factorized_val_accuracy"))),
        ("val accuracy, collapsed", _pct(metrics.get("val_accuracy"))),
        ("max |logit diff| (test)", _esc(metrics.get("max_abs_logit_diff_test"))),
        ("threshold", f"{_esc(metrics.get('threshold'))} ({_esc(metrics.get('threshold_mode'))})"),
        ("final λ", _esc(metrics.get("lam")) + _restarts_note(metrics.get("lam_restarts"))),
        *([("training restarts", divergence)] if divergence else []),
        *(
            [("learning-rate probe", _probe_note(metrics["lr_probe"]))]
            if isinstance(metrics.get("lr_probe"), dict)
            else []
        ),
        ("device", _esc(metrics.get("device"))),
        ("training time", f"{_num(metrics.get('train_seconds')) or 0.0:.1f} s"),
    ]


def _layers_table(metrics: dict[str, Any]) -> str:
    rows = []
    for layer in metrics.get("layers") or []:
        shape = "×".join(str(d) for d in layer.get("shape") or [])
        rows.append(
            f"<tr><td><code>{_esc(layer.get('name'))}</code></td><td>{html.escape(shape)}</td>"
            f'<td class="num">{_esc(layer.get("nnz"))}</td><td class="num">{_esc(layer.get("total"))}</td>'
            f'<td class="num">{_pct(layer.get("sparsity"))}</td></tr>'
        )
    if not rows:
        return "<p>No per-layer counts.</p>"
    head = "<tr><th>layer</th><th>shape</th><th>non-zeros</th><th>weights</th><th>sparsity</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _frontier_table(metrics: dict[str, Any]) -> str:
    points = _frontier_points(metrics)
    if not points:
        return ""
    head = (
        "<tr><th>threshold</th><th>sparsity</th><th>compression</th><th>test acc.</th><th>val acc.</th>"
        "<th>non-zeros</th><th>bytes</th><th>file</th></tr>"
    )
    rows = "".join(
        f'<tr><td class="num">{_esc(p.get("threshold"))}</td><td class="num">{_pct(p.get("sparsity"))}</td>'
        f'<td class="num">{_ratio(p.get("compression_ratio"))}</td>'
        f'<td class="num">{_pct(p.get("test_accuracy"))}</td><td class="num">{_pct(p.get("val_accuracy"))}</td>'
        f'<td class="num">{_esc(p.get("nnz"))}</td><td class="num">{_size(p.get("bytes"))}</td>'
        f"<td><code>{html.escape(str(p.get('file') or ''))}</code></td></tr>"
        for p in points
    )
    return f"<h3>Frontier points</h3><table>{head}{rows}</table>"


def _artifact_rows(metrics: dict[str, Any], out_dir: Path) -> str:
    listed = {str(a.get("name")): a for a in metrics.get("artifacts") or [] if isinstance(a, dict)}
    names = list(listed)
    for name in ("metrics.json", *REPORT_ARTIFACTS[1:]):
        if name not in listed and (out_dir / REPORT_FILES.get(name, name)).is_file():
            names.append(name)
    rows = []
    for name in names:
        info = listed.get(name, {})
        path = out_dir / REPORT_FILES.get(name, name)
        size = info.get("bytes", path.stat().st_size if path.is_file() else None)
        sha = str(info.get("sha256") or "")
        rows.append(
            f'<tr><td><code>{html.escape(name)}</code></td><td class="num">{_size(size)}</td>'
            f"<td><code>{html.escape(sha[:16])}</code></td></tr>"
        )
    sparse = metrics.get("sparse_file") or {}
    note = ""
    if _num(sparse.get("file_bytes")) is not None:
        note = (
            f"<p>Sparse file: {_size(sparse.get('file_bytes'))} "
            f"(bound nnz·4+P/8: {_size(sparse.get('bound_bytes'))}).</p>"
        )
    head = "<tr><th>file</th><th>size</th><th>sha256 (prefix)</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>{note}"


def render_html(metrics: dict[str, Any], plots: dict[str, Path], out_dir: Path, title: str | None = None) -> str:
    """The report page for ``metrics`` with the given plot PNGs embedded."""
    model = (metrics.get("model") or {}).get("spec", "model")
    title = title or f"DWF report: {model}"
    cards = "".join(
        (
            _card("test accuracy (collapsed)", _pct(metrics.get("test_accuracy"))),
            _card("test accuracy (factorized)", _pct(metrics.get("factorized_test_accuracy"))),
            _card("sparsity achieved", _pct(metrics.get("sparsity"))),
            _card("compression ratio", _ratio(metrics.get("compression_ratio"))),
        )
    )
    images = "".join(_img(name, path) for name, path in plots.items())
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">Deep Weight Factorization run · generated {generated}</p>
<div class="cards">{cards}</div>
<h2>Results</h2>
{_table(_results_rows(metrics))}
<h2>Charts</h2>
<div class="plots">{images}</div>
<h2>Per-layer sparsity</h2>
{_layers_table(metrics)}
{_frontier_table(metrics)}
{inference_html(metrics)}
<h2>Settings</h2>
{_table(_settings_rows(metrics))}
<h2>Artifacts</h2>
{_artifact_rows(metrics, out_dir)}
</body></html>
"""


def write_report(out_dir: Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/plots/*.png`` from ``metrics`` (default: ``out_dir/metrics.json``).

    Returns:
        The report's path.

    Raises:
        FileNotFoundError: no metrics given and no metrics.json in ``out_dir``.
    """
    out_dir = Path(out_dir)
    if metrics is None:
        metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    plots = write_plots(metrics, out_dir / PLOTS_DIR)
    path = out_dir / REPORT_NAME
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(metrics, plots, out_dir), encoding="utf-8")
    tmp.replace(path)
    return path


def try_write_report(out_dir: Path, metrics: dict[str, Any] | None = None) -> Path | None:
    """``write_report`` for the end of a run: a report that cannot be drawn is logged, never fails the run."""
    try:
        return write_report(out_dir, metrics)
    except Exception:
        log.exception("could not write the report in %s", out_dir)
        return None


__all__ = ["REPORT_ARTIFACTS", "REPORT_FILES", "report_artifacts", "try_write_report", "write_report"]
