// Small inline-SVG charts for the dwf dashboard: line charts, horizontal bars, a scatter. No dependencies.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6feb", "#d9730d", "#2da44e", "#8250df", "#cf222e", "#6e7781"];

  function el(name, attrs = {}, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function finite(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  // "Nice" tick values covering [lo, hi].
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  // 1-2-5 ticks per decade when the range is narrow, powers of ten when it is wide.
  function logTicks(lo, hi) {
    const decades = Math.log10(hi / lo);
    const steps = decades > 3 ? [1] : decades > 1.5 ? [1, 3] : [1, 2, 5];
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of steps) {
        const v = m * Math.pow(10, e);
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      }
    }
    return out.length >= 2 ? out : [lo, hi];
  }

  // A formatter with enough decimals to tell neighbouring ticks apart.
  function tickFormat(values) {
    if (values.length < 2) return fmt;
    const step = Math.min(...values.slice(1).map((v, i) => Math.abs(v - values[i])).filter((d) => d > 0));
    if (!(step > 0) || step >= 1 || Math.max(...values.map(Math.abs)) >= 1e4) return fmt;
    const digits = Math.min(6, Math.ceil(-Math.log10(step) - 1e-9));
    return (v) => v.toFixed(digits);
  }

  function fmt(v) {
    if (!finite(v)) return "";
    const a = Math.abs(v);
    if (a >= 1e4) return v.toExponential(0);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return +v.toFixed(2) + "";
    if (a === 0) return "0";
    return +v.toPrecision(2) + "";
  }

  function empty(container, message) {
    container.replaceChildren();
    const p = document.createElement("p");
    p.className = "chart-empty";
    p.textContent = message;
    container.appendChild(p);
  }

  function frame(container, title, width, height) {
    container.replaceChildren();
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    svg.appendChild(el("title", {}, title));
    svg.appendChild(el("text", { x: width / 2, y: 16, "text-anchor": "middle", class: "chart-title" }, title));
    container.appendChild(svg);
    return svg;
  }

  // Axes with a linear or log scale; returns {x(v), y(v)} mapping data to pixels.
  function axes(svg, box, xr, yr, opts) {
    const { left, top, right, bottom } = box;
    const sx = scale(xr, left, right, opts.xlog);
    const sy = scale(yr, bottom, top, opts.ylog);
    const g = el("g", { class: "axis" });
    let xt = opts.xlog ? logTicks(xr[0], xr[1]) : ticks(xr[0], xr[1], opts.xticks || 6);
    if (opts.xint) {  // epochs: whole numbers only
      xt = xt.filter((v) => Number.isInteger(v));
      if (xt.length < 2) xt = [Math.ceil(xr[0]), Math.floor(xr[1])].filter((v, i, a) => a.indexOf(v) === i);
    }
    const yt = opts.ylog ? logTicks(yr[0], yr[1]) : ticks(yr[0], yr[1], 6);
    const yfmt = opts.yfmt || (opts.ylog ? fmt : tickFormat(yt));
    const xfmt = opts.xlog ? fmt : tickFormat(xt);
    for (const v of yt) {
      g.appendChild(el("line", { x1: left, x2: right, y1: sy(v), y2: sy(v), class: "grid" }));
      g.appendChild(el("text", { x: left - 6, y: sy(v) + 4, "text-anchor": "end" }, yfmt(v)));
    }
    for (const v of xt) {
      g.appendChild(el("line", { x1: sx(v), x2: sx(v), y1: top, y2: bottom, class: "grid" }));
      g.appendChild(el("text", { x: sx(v), y: bottom + 16, "text-anchor": "middle" }, xfmt(v)));
    }
    g.appendChild(el("rect", { x: left, y: top, width: right - left, height: bottom - top, class: "plot-area" }));
    if (opts.xlabel) {
      g.appendChild(el("text", { x: (left + right) / 2, y: bottom + 32, "text-anchor": "middle" }, opts.xlabel));
    }
    if (opts.ylabel) {
      const y = (top + bottom) / 2;
      g.appendChild(el("text", { x: 12, y, transform: `rotate(-90 12 ${y})`, "text-anchor": "middle" }, opts.ylabel));
    }
    svg.appendChild(g);
    return { x: sx, y: sy };
  }

  function scale([lo, hi], p0, p1, log) {
    if (log) {
      const a = Math.log10(lo), b = Math.log10(hi);
      return (v) => p0 + ((Math.log10(v) - a) / (b - a || 1)) * (p1 - p0);
    }
    return (v) => p0 + ((v - lo) / (hi - lo || 1)) * (p1 - p0);
  }

  function range(values, log, pad = 0.05) {
    let vs = values.filter(finite);
    if (log) vs = vs.filter((v) => v > 0);
    if (!vs.length) return null;
    let lo = Math.min(...vs), hi = Math.max(...vs);
    if (log) {
      if (hi / lo < 10) { lo /= 1.5; hi *= 1.5; }
      return [lo, hi];
    }
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    const d = (hi - lo) * pad;
    return [lo - d, hi + d];
  }

  // A one-line legend between the title and the plot area, right-aligned at x.
  function legend(svg, series, right, y) {
    const widths = series.map((s) => 28 + 6.2 * s.label.length);
    let x = right - widths.reduce((a, b) => a + b, 0);
    series.forEach((s, i) => {
      const g = el("g", { class: "legend" });
      g.appendChild(el("line", { x1: x, x2: x + 16, y1: y, y2: y, stroke: s.color, "stroke-width": 2.5 }));
      g.appendChild(el("text", { x: x + 21, y: y + 4 }, s.label));
      svg.appendChild(g);
      x += widths[i];
    });
  }

  // series: [{label, points: [[x, y], ...]}]; opts: {title, xlabel, ylabel, ylog, yfmt, band, refs}
  // refs: [{y, label}] dashed horizontal reference lines, labelled at their right end (e.g. the final value).
  function line(container, series, opts = {}) {
    const W = 520, H = 290;
    const visible = series
      .map((s, i) => ({ ...s, color: s.color || COLORS[i % COLORS.length],
        points: s.points.filter(([x, y]) => finite(x) && finite(y) && (!opts.ylog || y > 0)) }))
      .filter((s) => s.points.length);
    if (!visible.length) return empty(container, `${opts.title || "Chart"}: no data yet`);
    const svg = frame(container, opts.title || "", W, H);
    const xs = visible.flatMap((s) => s.points.map((p) => p[0]));
    const refs = (opts.refs || []).filter((r) => finite(r.y) && (!opts.ylog || r.y > 0));
    const ys = [...visible.flatMap((s) => s.points.map((p) => p[1])), ...refs.map((r) => r.y)];
    const xr = range(opts.band ? [...xs, opts.band.to] : xs, false, 0.02), yr = range(ys, opts.ylog);
    const box = { left: 58, top: 46, right: W - 14, bottom: H - 42 };
    const s = axes(svg, box, xr, yr, { xint: true, ...opts, xlabel: opts.xlabel || "epoch" });
    if (opts.band) {  // a shaded stretch of epochs (fine-tuning after the collapse)
      const x0 = Math.max(box.left, s.x(opts.band.from)), x1 = Math.min(box.right, s.x(opts.band.to));
      svg.appendChild(el("rect", { x: x0, y: box.top, width: Math.max(0, x1 - x0), height: box.bottom - box.top,
        class: "band" }));
      svg.appendChild(el("text", { x: x0 + 3, y: box.top + 12, class: "band-label" }, opts.band.label));
    }
    for (const ref of refs) {
      const y = s.y(ref.y);
      svg.appendChild(el("line", { x1: box.left, x2: box.right, y1: y, y2: y, stroke: ref.color || "#cf222e",
        "stroke-width": 1.5, "stroke-dasharray": "5 4", class: "ref" }));
      const below = y - 5 < box.top + 12;  // at the top of the plot: under the line, clear of the legend
      svg.appendChild(el("text", { x: box.right - 4, y: below ? y + 14 : y - 5, "text-anchor": "end",
        class: "ref-label", fill: ref.color || "#cf222e" }, ref.label));
    }
    for (const ser of visible) {
      const d = ser.points.map(([x, y], i) => `${i ? "L" : "M"}${s.x(x).toFixed(1)},${s.y(y).toFixed(1)}`).join("");
      svg.appendChild(el("path", { d, fill: "none", stroke: ser.color, "stroke-width": 2, class: "series" }));
      for (const [x, y] of ser.points) {
        const c = el("circle", { cx: s.x(x), cy: s.y(y), r: 2.5, fill: ser.color });
        c.appendChild(el("title", {}, `${ser.label}: epoch ${x}, ${fmt(y)}`));
        svg.appendChild(c);
      }
    }
    legend(svg, visible, box.right, 34);
  }

  // items: [{label, value (0..1)}]
  function bars(container, items, opts = {}) {
    const rows = items.filter((it) => finite(it.value));
    if (!rows.length) return empty(container, `${opts.title || "Chart"}: no data yet`);
    const W = 520, rowH = 22, top = 30, left = Math.min(220, 12 + 7 * Math.max(...rows.map((r) => r.label.length)));
    const H = top + rows.length * rowH + 30;
    const svg = frame(container, opts.title || "", W, H);
    const right = W - 16, x = (v) => left + v * (right - left);
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      svg.appendChild(el("line", { x1: x(t), x2: x(t), y1: top - 4, y2: H - 26, class: "grid" }));
      svg.appendChild(el("text", { x: x(t), y: H - 10, "text-anchor": "middle", class: "axis-text" }, `${t * 100}%`));
    }
    rows.forEach((r, i) => {
      const y = top + i * rowH;
      svg.appendChild(el("text", { x: left - 6, y: y + 14, "text-anchor": "end", class: "bar-label" }, r.label));
      svg.appendChild(el("rect", { x: left, y: y + 3, width: right - left, height: rowH - 6, class: "bar-bg" }));
      const bar = el("rect", { x: left, y: y + 3, width: Math.max(0, x(r.value) - left), height: rowH - 6,
        class: "bar", fill: opts.color || COLORS[0] });
      bar.appendChild(el("title", {}, `${r.label}: ${(100 * r.value).toFixed(2)}%`));
      svg.appendChild(bar);
      const inside = r.value > 0.2;
      svg.appendChild(el("text", { x: inside ? x(r.value) - 4 : x(r.value) + 4, y: y + 15,
        "text-anchor": inside ? "end" : "start", class: inside ? "bar-value in" : "bar-value" },
        `${(100 * r.value).toFixed(1)}%`));
    });
  }

  // series: [{label, points: [{x, y, tip}]}], highlight: {x, y, label}; opts: {title, xlabel, ylabel, xlog}
  function scatter(container, series, opts = {}, highlight = null) {
    const W = 520, H = 310;
    const visible = series
      .map((s, i) => ({ ...s, color: s.color || COLORS[i % COLORS.length],
        points: s.points.filter((p) => finite(p.x) && finite(p.y) && (!opts.xlog || p.x > 0)) }))
      .filter((s) => s.points.length);
    if (!visible.length) return empty(container, `${opts.title || "Chart"}: no data`);
    const svg = frame(container, opts.title || "", W, H);
    const all = visible.flatMap((s) => s.points);
    if (highlight && finite(highlight.x) && finite(highlight.y)) all.push(highlight);
    const xr = range(all.map((p) => p.x), opts.xlog), yr = range(all.map((p) => p.y), false, 0.1);
    const box = { left: 58, top: 46, right: W - 14, bottom: H - 42 };
    const s = axes(svg, box, xr, yr, opts);
    for (const ser of visible) {
      const pts = [...ser.points].sort((a, b) => a.x - b.x);
      const d = pts.map((p, i) => `${i ? "L" : "M"}${s.x(p.x).toFixed(1)},${s.y(p.y).toFixed(1)}`).join("");
      svg.appendChild(el("path", { d, fill: "none", stroke: ser.color, "stroke-dasharray": "3 3", "stroke-width": 1 }));
      for (const p of pts) {
        const c = el("circle", { cx: s.x(p.x), cy: s.y(p.y), r: 4.5, fill: ser.color, class: "dot" });
        c.appendChild(el("title", {}, p.tip || `${fmt(p.x)}, ${fmt(p.y)}`));
        svg.appendChild(c);
      }
    }
    const legendSeries = [...visible];
    if (highlight && finite(highlight.x) && finite(highlight.y)) {
      const hx = s.x(highlight.x), hy = s.y(highlight.y);
      const star = el("path", { d: `M${hx},${hy - 8}L${hx + 2.4},${hy - 2.4}L${hx + 8},${hy - 2.4}L${hx + 3.6},${hy + 1.6}`
        + `L${hx + 5.2},${hy + 8}L${hx},${hy + 4}L${hx - 5.2},${hy + 8}L${hx - 3.6},${hy + 1.6}L${hx - 8},${hy - 2.4}`
        + `L${hx - 2.4},${hy - 2.4}Z`, fill: "#cf222e" });
      star.appendChild(el("title", {}, highlight.label || "this model"));
      svg.appendChild(star);
      legendSeries.push({ label: highlight.label || "this model", color: "#cf222e" });
    }
    legend(svg, legendSeries, box.right, 34);
  }

  return { line, bars, scatter };
})();
