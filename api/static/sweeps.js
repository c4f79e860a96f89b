// dwf dashboard, sweeps: the list (#/sweeps) and one sweep (#/sweeps/ID) with its children and frontier.png.
// Uses app.js's api(), h(), show(), flash(), state.poll and the formatting helpers; route() calls in here.
"use strict";

const SWEEP_DONE = new Set(["succeeded", "failed", "partially_failed", "cancelled"]);

function gridText(grid) {
  return Object.entries(grid).map(([k, v]) => `${k} = ${v.join(", ")}`).join("; ");
}

function schedule(fn) {
  // While a sweep is unfinished its page or list refreshes every 3 s (stopLive() on any navigation clears it).
  if (state.poll) clearInterval(state.poll);
  state.poll = setInterval(fn, 3000);
}

async function loadSweeps() {
  show("sweeps");
  let page;
  try {
    page = await api("/v1/sweeps?limit=50");
  } catch (err) {
    return flash(`Could not list sweeps: ${err.message}`);
  }
  const rows = page.data.map((s) => {
    const ended = ["succeeded", "failed", "cancelled"].reduce((n, k) => n + (s.counts[k] || 0), 0);
    return h("tr", { "data-sweep": s.id },
      h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, h("code", {}, s.id))),
      h("td", {}, h("span", { class: `badge ${s.status}` }, s.status)),
      h("td", {}, s.model.name || s.model.file_id || ""),
      h("td", {}, gridText(s.grid)),
      h("td", {}, `${ended}/${s.children.length}`),
      h("td", {}, when(s.created_at)));
  });
  $("#sweeps-table tbody").replaceChildren(...rows);
  $("#sweeps-empty").hidden = rows.length > 0;
  if (page.data.some((s) => !SWEEP_DONE.has(s.status))) {
    schedule(() => { if (state.view === "sweeps") loadSweeps(); });
  } else if (state.poll) {
    clearInterval(state.poll);
    state.poll = null;
  }
}

async function openSweep(sweepId) {
  show("sweep");
  state.sweepId = sweepId;
  state.frontierShown = null;
  $("#sweep-frontier").replaceChildren(h("p", { class: "hint" }, "The frontier appears when every child has ended."));
  await refreshSweep(sweepId);
}

async function refreshSweep(sweepId) {
  let sweep;
  try {
    sweep = await api(`/v1/sweeps/${sweepId}`);
  } catch (err) {
    return flash(err.status === 404 ? `No sweep ${sweepId}.` : err.message);
  }
  if (state.view !== "sweep" || state.sweepId !== sweepId) return;
  renderSweep(sweep);
  if (!SWEEP_DONE.has(sweep.status)) {
    if (!state.poll) schedule(() => refreshSweep(sweepId));
  } else {
    if (state.poll) clearInterval(state.poll);
    state.poll = null;
    showFrontier(sweep);
  }
}

function renderSweep(sweep) {
  $("#sweep-title").textContent = sweep.id;
  const badge = $("#sweep-status");
  badge.textContent = sweep.status;
  badge.className = `badge ${sweep.status}`;
  $("#sweep-sub").textContent =
    `${sweep.model.name || sweep.model.file_id || ""} · ${gridText(sweep.grid)} · ${settingsText({ ...sweep.method, epochs: sweep.method.epochs ?? 40 })}`;
  $("#sweep-cancel").hidden = SWEEP_DONE.has(sweep.status) || sweep.status === "finalizing";
  const axes = Object.keys(sweep.grid);
  $("#sweep-children thead").replaceChildren(h("tr", {},
    h("th", {}, "Job"), ...axes.map((a) => h("th", {}, a)), h("th", {}, "Status"), h("th", {}, "Epoch"),
    h("th", { class: "num" }, "Accuracy"), h("th", { class: "num" }, "Sparsity"), h("th", { class: "num" }, "CR")));
  $("#sweep-children tbody").replaceChildren(...sweep.children.map((c) => h("tr", { "data-job": c.job_id },
    h("td", {}, h("a", { href: `#/jobs/${c.job_id}` }, h("code", {}, c.job_id))),
    ...axes.map((a) => h("td", {}, c.point[a] ?? "—")),
    h("td", {}, h("span", { class: `badge ${c.status}` }, c.status), c.error_code ? ` ${c.error_code}` : null),
    h("td", {}, num(c.epoch) ? `${c.epoch}/${c.epochs}` : "—"),
    h("td", { class: "num", "data-col": "accuracy" }, pct(c.test_accuracy)),
    h("td", { class: "num" }, pct(c.sparsity)),
    h("td", { class: "num" }, ratio(c.compression_ratio)))));
}

async function showFrontier(sweep) {
  if (state.frontierShown === sweep.id) return;
  state.frontierShown = sweep.id;
  const box = $("#sweep-frontier");
  let list;
  try {
    list = await api(`/v1/sweeps/${sweep.id}/artifacts`);
  } catch (err) {
    return flash(err.message);
  }
  const png = list.data.find((a) => a.name === "frontier.png");
  const items = list.data.map((a) => h("li", {}, h("code", {}, a.name), h("span", { class: "size" }, size(a.bytes)),
    h("button", { type: "button", "data-artifact": a.name, onclick: () => download(a) }, "Download")));
  const children = [h("ul", { class: "artifacts" }, ...items)];
  if (png) {
    try {
      const url = URL.createObjectURL(await fetchBlob(png));
      children.unshift(h("img", { id: "frontier-img", src: url, alt: "accuracy vs compression Pareto front" }));
    } catch (err) {
      flash(`Could not load frontier.png: ${err.message}`);
    }
  }
  box.replaceChildren(...children);
}

async function cancelSweep() {
  try {
    renderSweep(await api(`/v1/sweeps/${state.sweepId}/cancel`, { method: "POST" }));
  } catch (err) {
    flash(`Cancel failed: ${err.message}`);
  }
}
