// dwf dashboard: sign in with an API key, list jobs, follow one live, submit a job. Plain JS, no build step.
// Every call sends "Authorization: Bearer <key>"; the server-sent events stream is read with fetch() (an
// EventSource cannot send that header) and artifacts are downloaded as blobs for the same reason.
"use strict";

const KEY_STORAGE = "dwf_api_key";
const ACTIVE = new Set(["validating_files", "queued", "running"]);
const $ = (sel, root = document) => root.querySelector(sel);

const state = { jobsAfter: null, view: null, jobId: null, stream: null, poll: null, history: [], events: [], cut: null,
  historyFinal: false };

// ------------------------------------------------------------------------------------------------- API calls

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.param = err.param;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, { method = "GET", json, form, signal, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const resp = await fetch(path, { method, headers, body, signal });
  if (resp.status === 401) {
    signOut("Your API key was refused; sign in again.");
    throw new ApiError(401, await resp.json().catch(() => null));
  }
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  return raw ? resp : resp.json();
}

// ------------------------------------------------------------------------------------------------- helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const num = (v) => typeof v === "number" && Number.isFinite(v);
const pct = (v, d = 2) => (num(v) ? `${(100 * v).toFixed(d)}%` : "—");
const ratio = (v) => (num(v) ? `${v.toFixed(1)}×` : "—");
function size(n) {
  if (!num(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function duration(s) {
  if (!num(s)) return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function flash(message, kind = "error") {
  const box = $("#flash");
  if (!message) { box.hidden = true; return; }
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.hidden = false;
}

function settingsText(method) {
  const parts = [`depth ${method.depth ?? "auto"}`, `${method.epochs} ep`];
  if (num(method.target_sparsity)) parts.push(`target ${pct(method.target_sparsity, 1)}`);
  else if (num(method.lam)) parts.push(`λ ${method.lam}`);
  if (method.structure && method.structure !== "weights") parts.push(`structure ${method.structure}`);
  if (method.cut) parts.push(`${method.cut} cut`);
  if (num(method.target_macs)) parts.push(`MACs ≤ ${pct(method.target_macs, 1)}`);
  return parts.join(", ");
}

// ------------------------------------------------------------------------------------------------- routing

function show(view) {
  for (const sec of document.querySelectorAll(".view")) sec.hidden = sec.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === view);
  state.view = view;
}

function stopLive() {
  if (state.stream) state.stream.abort();
  if (state.poll) clearInterval(state.poll);
  state.stream = state.poll = null;
  $("#live").hidden = true;
}

function route() {
  stopLive();
  flash(null);
  if (!apiKey()) {
    $("#nav").hidden = true;
    show("signin");
    return;
  }
  $("#nav").hidden = false;
  const hash = location.hash || "#/jobs";
  const m = hash.match(/^#\/jobs\/([\w-]+)$/);
  if (m) return openJob(m[1]);
  const sw = hash.match(/^#\/sweeps\/([\w-]+)$/);
  if (sw) return openSweep(sw[1]);  // sweeps.js
  if (hash === "#/sweeps") return loadSweeps();
  if (hash === "#/new") return show("new");
  show("jobs");
  loadJobs(true);
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = "#/signin";
  route();
  if (message) flash(message);
}

// ------------------------------------------------------------------------------------------------- job list

async function loadJobs(reset) {
  const tbody = $("#jobs-table tbody");
  if (reset) state.jobsAfter = null;
  const params = new URLSearchParams({ limit: "20" });
  const status = $("#status-filter").value;
  if (status) params.set("status", status);
  if (state.jobsAfter) params.set("after", state.jobsAfter);
  let page;
  try {
    page = await api(`/v1/jobs?${params}`);
  } catch (err) {
    return flash(`Could not list jobs: ${err.message}`);
  }
  const rows = page.data.map(jobRow);
  if (reset) tbody.replaceChildren(...rows);  // replaced at once: no empty table while loading
  else tbody.append(...rows);
  state.jobsAfter = page.last_id;
  // While a job on the first page is active, refresh the list every few seconds.
  if (reset && !state.poll && page.data.some((j) => ACTIVE.has(j.status))) {
    state.poll = setInterval(() => {
      if (state.view !== "jobs") return;
      clearInterval(state.poll);
      state.poll = null;
      loadJobs(true);
    }, 3000);
  }
  $("#jobs-more").hidden = !page.has_more;
  $("#jobs-empty").hidden = tbody.children.length > 0;
}

function jobRow(job) {
  const m = job.metrics || {};
  const fraction = num(job.progress.fraction) ? job.progress.fraction : job.status === "succeeded" ? 1 : 0;
  const bar = h("div", { class: "progress mini" }, h("div", { style: `width:${100 * fraction}%` }));
  const epochs = num(job.progress.epoch) ? `${job.progress.epoch}/${job.progress.epochs}` : "";
  const model = job.model.name || job.model.file_id || "";
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, h("code", {}, job.id))),
    h("td", {}, h("span", { class: `badge ${job.status}` }, job.status)),
    h("td", {}, model),
    h("td", {}, settingsText(job.method)),
    h("td", {}, bar, epochs),
    h("td", {}, pct(m.test_accuracy ?? m.val_accuracy)),
    h("td", {}, pct(m.sparsity)),
    h("td", {}, when(job.created_at)));
}

// ------------------------------------------------------------------------------------------------- job page

async function openJob(jobId) {
  show("job");
  state.jobId = jobId;
  state.history = [];
  state.historyFinal = false;
  state.events = [];
  state.phase = null;
  $("#job-title").textContent = jobId;
  $("#events").replaceChildren();
  $("#artifacts").replaceChildren(h("li", { class: "hint" }, "Available when the job succeeds."));
  let job;
  try {
    job = await api(`/v1/jobs/${jobId}`);
  } catch (err) {
    return flash(`Could not load ${jobId}: ${err.message}`);
  }
  renderJob(job);
  if (ACTIVE.has(job.status)) {
    followEvents(jobId);
    state.poll = setInterval(() => refreshJob(jobId), 2000);
  } else {
    await loadAllEvents(jobId);
    await loadArtifacts(jobId);
  }
}

async function refreshJob(jobId) {
  if (state.jobId !== jobId || state.view !== "job") return;
  try {
    const job = await api(`/v1/jobs/${jobId}`);
    renderJob(job);
    if (!ACTIVE.has(job.status)) {
      if (state.poll) clearInterval(state.poll);
      state.poll = null;
      await loadArtifacts(jobId);
    }
  } catch (err) {
    flash(err.message);
  }
}

async function loadAllEvents(jobId) {
  let after = null;
  for (let i = 0; i < 100; i++) {
    const params = new URLSearchParams({ limit: "100" });
    if (after) params.set("after", after);
    const page = await api(`/v1/jobs/${jobId}/events?${params}`);
    page.data.forEach(addEvent);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
}

// Server-sent events over fetch(): parse "id:/event:/data:" blocks ourselves (EventSource cannot send headers).
async function followEvents(jobId) {
  const controller = new AbortController();
  state.stream = controller;
  $("#live").hidden = false;
  let lastId = null;
  for (let attempt = 0; attempt < 20 && state.stream === controller; attempt++) {
    try {
      const params = new URLSearchParams({ stream: "true" });
      if (lastId) params.set("after", lastId);
      const resp = await api(`/v1/jobs/${jobId}/events?${params}`, { signal: controller.signal, raw: true });
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const msg = { event: "message", data: "", id: null };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const [field, ...rest] = line.split(":");
            const val = rest.join(":").replace(/^ /, "");
            if (field === "event") msg.event = val;
            else if (field === "data") msg.data += val;
            else if (field === "id") msg.id = val;
          }
          if (msg.id) lastId = msg.id;
          if (msg.event === "end") {
            $("#live").hidden = true;
            state.stream = null;
            await refreshJob(jobId);
            return;
          }
          if (msg.data) {
            addEvent(JSON.parse(msg.data));
            if (msg.event !== "metrics") refreshJob(jobId);
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 1000));  // the stream broke: resume after the last event seen
  }
}

function addEvent(evt) {
  if (state.events.some((e) => e.id === evt.id)) return;
  state.events.push(evt);
  if (evt.type === "message" && evt.message.startsWith("phase: ")) state.phase = evt.message.slice(7);
  const li = h("li", { class: `${evt.type} ${evt.level}` }, h("time", {}, new Date(evt.created_at).toLocaleTimeString()),
    evt.message);
  $("#events").append(li);
  li.scrollIntoView({ block: "nearest" });
  // A finished job's metrics carry its whole history (renderJob): its epoch events are listed, not charted again.
  if (evt.type === "metrics" && evt.data && !state.historyFinal) {
    if (evt.data.restart) {
      // λ over-pruned: training starts over from epoch 1 (the event's message says why); the charts follow the new run.
      state.history = [];
    } else {
      // Fine-tuning after the collapse numbers its epochs from 1 again: its points follow the training epochs.
      const phase = { finetuning: "finetune", pretraining: "dense" }[state.phase] || "train";
      state.history.push({ ...evt.data, phase });
    }
    drawEpochCharts(state.history);
  }
}

function card(label, value) {
  return h("div", { class: "card" }, h("b", {}, value), h("span", {}, label));
}

function renderJob(job) {
  const m = job.metrics || {};
  $("#job-status").textContent = job.status;
  $("#job-status").className = `badge ${job.status}`;
  const model = job.model.name || `ONNX ${job.model.file_id}`;
  $("#job-sub").textContent = `${model} · ${settingsText(job.method)} · created ${when(job.created_at)}`
    + (job.phase ? ` · phase: ${job.phase}` : "");
  const fraction = num(job.progress.fraction) ? job.progress.fraction : job.status === "succeeded" ? 1 : 0;
  $("#job-progress-bar").style.width = `${100 * fraction}%`;
  const eta = ACTIVE.has(job.status) && num(job.progress.eta_seconds) ? ` · ETA ${duration(job.progress.eta_seconds)}` : "";
  $("#job-progress-text").textContent = num(job.progress.epoch)
    ? `epoch ${job.progress.epoch} of ${job.progress.epochs} · ${pct(fraction, 0)}${eta}` : pct(fraction, 0);
  $("#job-cancel").hidden = !ACTIVE.has(job.status);
  const errBox = $("#job-error");
  errBox.hidden = !job.error;
  if (job.error) errBox.textContent = `${job.error.code}: ${job.error.message}` + (job.error.param ? ` (${job.error.param})` : "");

  const done = job.status === "succeeded";
  const requested = job.method.target_sparsity;
  $("#job-cards").replaceChildren(
    card(done ? "test accuracy (collapsed)" : "val accuracy (last epoch)", pct(done ? m.test_accuracy : m.val_accuracy)),
    card("test accuracy (factorized)", pct(m.factorized_test_accuracy)),
    card(num(requested) ? `sparsity (requested ${pct(requested, 1)}${m.target_met === false ? ", missed" : ""})` : "sparsity achieved", pct(m.sparsity)),
    card("compression ratio", ratio(m.compression_ratio)),
  );
  state.historyFinal = Array.isArray(m.history) && m.history.length > 0;  // a finished job's whole history
  if (state.historyFinal) state.history = [...m.history];
  state.cut = finalCut(job);
  drawEpochCharts(state.history);
  const layers = Array.isArray(m.layers) ? m.layers : [];
  Charts.bars($("#chart-layers"), layers.map((l) => ({ label: l.name, value: l.sparsity })),
    { title: "Sparsity per layer" });
  drawFrontier(m);
  renderInference(m);
  renderSettings(job);
}

// The compression the user gets: the final cut's once the job succeeded; while a target-sparsity job runs, the
// target's (the collapse cuts at the target's quantile). A λ job's cut is searched for only at the end.
function finalCut(job) {
  const m = job.metrics || {};
  if (job.status === "succeeded" && num(m.compression_ratio)) {
    return { y: m.compression_ratio, label: `final cut ${ratio(m.compression_ratio)}` };
  }
  const target = job.method.target_sparsity;
  if (ACTIVE.has(job.status) && num(target) && target < 1) {
    return { y: 1 / (1 - target), label: `target ${ratio(1 / (1 - target))}` };
  }
  return null;
}

function drawEpochCharts(history) {
  // x: the epoch's position in the run; fine-tuning epochs (phase "finetune") are shaded after the training ones.
  const series = (key) => history.map((r, i) => [i + 1, r[key]]);
  const tuned = history.map((r, i) => (r.phase === "finetune" ? i + 1 : null)).filter((x) => x !== null);
  const band = tuned.length ? { from: Math.min(...tuned) - 0.5, to: Math.max(...tuned) + 0.5, label: "fine-tune" } : null;
  Charts.line($("#chart-loss"), [{ label: "train loss", points: series("train_loss") },
    { label: "val loss", points: series("val_loss") }], { title: "Loss per epoch", band });
  Charts.line($("#chart-accuracy"), [{ label: "train", points: series("train_accuracy").map(([x, y]) => [x, 100 * y]) },
    { label: "val", points: series("val_accuracy").map(([x, y]) => [x, 100 * y]) }],
  { title: "Accuracy per epoch (%)", band });
  // The trainer measures each epoch's CR at its monitor threshold (|w| < 1e-3), not at the collapse's cut (a
  // target's quantile, or the tolerance search): a target job reads ~1× for every epoch and then ends at 5×.
  // So the chart says what it shows, and marks the final (or target) cut next to it.
  const threshold = history.map((r) => r.monitor_threshold).find(num);
  const below = num(threshold) ? `|w| < ${threshold}` : "the monitor threshold";
  const cr = series("compression_ratio");
  const refs = state.cut ? [state.cut] : [];
  const wide = [...cr.map(([, y]) => y), ...refs.map((r) => r.y)].some((y) => num(y) && y > 20);
  Charts.line($("#chart-cr"), [{ label: "monitor CR", points: cr, color: "#2da44e" }],
    { title: `CR per epoch at ${below} (monitor, not the final cut)`, ylabel: "compression ratio (×)", ylog: wide,
      band, refs });
}

function drawFrontier(m) {
  const box = $("#chart-frontier");
  const points = Array.isArray(m.frontier) ? m.frontier.filter((p) => num(p.compression_ratio)) : [];
  box.hidden = !points.length;
  if (!points.length) return;
  const tip = (p, key) => `CR ${ratio(p.compression_ratio)}, sparsity ${pct(p.sparsity)}, ${key} ${pct(p[key])}`
    + `, ${p.nnz} non-zeros, ${size(p.bytes)}, threshold ${p.threshold}`;
  const series = ["test_accuracy", "val_accuracy"].map((key) => ({
    label: key.replace("_accuracy", ""),
    points: points.filter((p) => num(p[key])).map((p) => ({ x: p.compression_ratio, y: 100 * p[key], tip: tip(p, key) })),
  }));
  const here = num(m.compression_ratio) && num(m.test_accuracy)
    ? { x: m.compression_ratio, y: 100 * m.test_accuracy, label: "this model (test)" } : null;
  Charts.scatter(box, series, { title: "Accuracy vs compression ratio (frontier)", xlabel: "compression ratio (log)",
    ylabel: "accuracy (%)", xlog: true }, here);
}

// metrics.inference (dwf_core.inference.measure) and metrics.compact (dwf_core.compact): MACs, parameters, ONNX
// bytes and onnxruntime latency of the dense, compact and int8 models, or why there are none. Text nodes only.
const INFERENCE_MODELS = [["dense", "dense"], ["compact", "compact"], ["compact_int8", "int8"]];
const count = (v) => (num(v) ? v.toLocaleString("en-US") : "—");
const ms = (v) => (num(v) ? (v >= 10 ? v.toFixed(1) : v.toPrecision(2)) : "—");
const small = (v) => (v === 0 ? "0" : Math.abs(v) < 1e-3 ? v.toExponential(1) : v.toPrecision(2));
const speed = (v) => (num(v) ? `${v.toFixed(v < 10 ? 2 : 1)}×` : "—");
const speedups = (s) => Object.entries(s).map(([b, v]) => `batch ${b} ${speed(v)}`).join(", ");

function renderInference(m) {
  const box = $("#job-inference");
  const inference = m.inference && typeof m.inference === "object" ? m.inference : null;
  const compact = m.compact && typeof m.compact === "object" ? m.compact : null;
  box.hidden = !inference && !compact;
  if (box.hidden) return box.replaceChildren();
  const batches = ((inference && inference.batches) || [1, 64]).map(String);
  const rows = INFERENCE_MODELS.filter(([key]) => inference && inference[key] && typeof inference[key] === "object")
    .map(([key, label]) => {
      const e = inference[key];
      const latency = e.latency_ms || {};
      const params = num(e.nonzero_params) && e.nonzero_params !== e.params
        ? `${count(e.params)} (${count(e.nonzero_params)} non-zero)` : count(e.params);
      return h("tr", { "data-model": label },
        h("td", {}, label, e.file ? h("code", { class: "file" }, e.file) : null),
        h("td", { class: "num", "data-col": "macs" }, count(e.macs)),
        h("td", { class: "num", "data-col": "params" }, params),
        h("td", { class: "num", "data-col": "bytes", title: num(e.bytes) ? `${count(e.bytes)} B` : null }, size(e.bytes)),
        batches.map((b) => h("td", { class: "num", "data-col": `latency-${b}` }, ms(latency[b]))));
    });
  const notes = [];
  if (inference && inference.skipped) notes.push(`Not measured: ${inference.skipped}`);
  if (inference && inference.speedup && typeof inference.speedup === "object") {
    const fewer = num(inference.mac_reduction) ? `${ratio(inference.mac_reduction)} fewer MACs; ` : "";
    notes.push(`Compact vs dense: ${fewer}speed-up ${speedups(inference.speedup)}.`);
  }
  if (inference && inference.int8_speedup && typeof inference.int8_speedup === "object") {
    notes.push(`int8 vs dense: speed-up ${speedups(inference.int8_speedup)}.`);
  }
  if (compact && compact.skipped) {
    notes.push(`No compact model: ${compact.skipped}`);
  } else if (compact) {
    if (num(compact.max_abs_diff)) notes.push(`Compact vs sparse model: max |Δlogit| ${small(compact.max_abs_diff)}.`);
    if (compact.channels_skipped) notes.push(`Units and channels kept whole: ${compact.channels_skipped}`);
    if (compact.selected_inputs_skipped) notes.push(`Input columns kept whole: ${compact.selected_inputs_skipped}`);
    const int8 = compact.int8;
    if (int8 && int8.skipped) notes.push(`No int8 model: ${int8.skipped}`);
    else if (int8 && typeof int8 === "object") {
      notes.push(`int8 test accuracy ${pct(int8.test_accuracy)} (float ${pct(int8.float_test_accuracy)}).`);
    }
  }
  if (inference && inference.runtime) {
    const threads = inference.threads === 1 ? "one thread" : `${inference.threads} threads`;
    notes.push(`${inference.runtime}, ${threads}, latency in ms per batch (median of alternating runs).`);
  }
  const head = h("tr", {}, h("th", {}, "model"), h("th", {}, "MACs / sample"), h("th", {}, "parameters"),
    h("th", {}, "ONNX bytes"), batches.map((b) => h("th", {}, `latency, batch ${b} (ms)`)));
  box.replaceChildren(h("h2", {}, "Inference"),
    rows.length ? h("table", { class: "list inference", id: "inference-table" }, h("thead", {}, head), h("tbody", {}, rows)) : null,
    h("ul", { class: "inference-notes", id: "inference-notes" }, notes.map((n) => h("li", {}, n))));
}

function renderSettings(job) {
  const rows = [["seed", job.seed], ["dataset", job.dataset.file_id], ["val fraction", job.dataset.val_fraction]];
  for (const [k, v] of Object.entries(job.method)) {
    if (v !== null && v !== undefined) rows.push([k, Array.isArray(v) ? v.join(", ") : v]);
  }
  rows.push(["attempts", job.attempts], ["started", when(job.started_at)], ["finished", when(job.finished_at)]);
  const trs = rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v ?? ""))));
  // A continued job (from_job): a link to the job whose trained factors it started from.
  if (job.parent_job_id) {
    const link = h("a", { href: `#/jobs/${job.parent_job_id}`, id: "job-parent" }, job.parent_job_id);
    trs.unshift(h("tr", {}, h("th", {}, "continues"), h("td", {}, link)));
  }
  $("#job-settings").replaceChildren(...trs);
}

async function loadArtifacts(jobId) {
  let list;
  try {
    list = await api(`/v1/jobs/${jobId}/artifacts`);
  } catch (err) {
    return flash(err.message);
  }
  const ul = $("#artifacts");
  if (!list.data.length) {
    ul.replaceChildren(h("li", { class: "hint" }, "No artifacts."));
    return;
  }
  ul.replaceChildren(...list.data.map((a) => h("li", {},
    h("code", {}, a.name), h("span", { class: "size" }, size(a.bytes)),
    a.name.endsWith(".html") ? h("button", { type: "button", class: "secondary", onclick: () => openArtifact(a) }, "Open") : null,
    h("button", { type: "button", "data-artifact": a.name, onclick: () => download(a) }, "Download"))));
}

async function fetchBlob(artifact) {
  const resp = await api(artifact.url, { raw: true });
  return resp.blob();
}

async function download(artifact) {
  try {
    const url = URL.createObjectURL(await fetchBlob(artifact));
    const a = h("a", { href: url, download: artifact.name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    flash(`Download failed: ${err.message}`);
  }
}

async function openArtifact(artifact) {
  const tab = window.open("", "_blank");
  try {
    const blob = await fetchBlob(artifact);
    const url = URL.createObjectURL(new Blob([blob], { type: "text/html" }));
    if (tab) tab.location = url; else location.href = url;
  } catch (err) {
    if (tab) tab.close();
    flash(`Could not open ${artifact.name}: ${err.message}`);
  }
}

// ------------------------------------------------------------------------------------------------- submit

async function uploadFile(file, purpose) {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return (await api("/v1/files", { method: "POST", form })).id;
}

function numberOrNull(value) {
  if (value === "" || value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const f = form.elements;
  const status = $("#submit-status");
  const button = $("#submit-job");
  flash(null);
  button.disabled = true;
  try {
    const source = f.model_source.value;
    const body = { model: {}, dataset: {}, method: { type: "dwf", epochs: Number(f.epochs.value) } };
    const depth = numberOrNull(f.depth.value);
    if (depth) body.method.depth = depth;
    const batch = numberOrNull(f.batch_size.value);
    if (batch) body.method.batch_size = batch;
    const lr = numberOrNull(f.lr.value);
    if (lr) body.method.lr = lr;
    if (f.strength.value === "lam") body.method.lam = Number(f.lam.value);
    if (f.strength.value === "target") body.method.target_sparsity = Number(f.target_sparsity.value) / 100;
    if (f.strength.value === "target" && f.cut.value) body.method.cut = f.cut.value;
    const frontier = f.frontier.value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (frontier.length) body.method.frontier = frontier;
    const denseEpochs = numberOrNull(f.dense_epochs.value);
    if (denseEpochs) body.method.dense_epochs = denseEpochs;
    const distill = numberOrNull(f.distill.value);
    if (distill !== null) body.method.distill = distill;
    const augment = f.augment.value.trim();
    if (augment) body.method.augment = augment;
    if (f.precision.value !== "auto") body.method.precision = f.precision.value;
    if (f.structure.value !== "weights") body.method.structure = f.structure.value;
    const targetMacs = numberOrNull(f.target_macs.value);
    if (targetMacs) body.method.target_macs = targetMacs / 100;
    const dataset = f.dataset_file.files[0];
    if (!dataset) throw new Error("choose a dataset file");
    if (source === "file") {
      const model = f.model_file.files[0];
      if (!model) throw new Error("choose an ONNX model or config.json file");
      status.textContent = `uploading ${model.name}…`;
      body.model.file_id = await uploadFile(model, "model");
    } else {
      body.model.name = f.model_name.value.trim();
      const weights = f.weights_file.files[0];
      if (weights) {
        status.textContent = `uploading ${weights.name}…`;
        body.weights_file_id = await uploadFile(weights, "weights");
      }
    }
    status.textContent = `uploading ${dataset.name}…`;
    body.dataset.file_id = await uploadFile(dataset, "dataset");
    const vf = numberOrNull(f.val_fraction.value);
    if (vf) body.dataset.val_fraction = vf;
    status.textContent = "creating the job…";
    const job = await api("/v1/jobs", { method: "POST", json: body });
    status.textContent = "";
    location.hash = `#/jobs/${job.id}`;
  } catch (err) {
    status.textContent = "";
    flash(`Could not submit: ${err.message}` + (err.param ? ` (${err.param})` : ""));
  } finally {
    button.disabled = false;
  }
}

function syncForm() {
  const f = $("#job-form").elements;
  for (const div of document.querySelectorAll("[data-source]")) {
    div.hidden = div.dataset.source !== f.model_source.value;
    // a hidden source's inputs are disabled so their checks (the model name's pattern) do not block the submit
    for (const input of div.querySelectorAll("input")) input.disabled = div.hidden;
  }
  for (const el of document.querySelectorAll("[data-strength]")) el.hidden = el.dataset.strength !== f.strength.value;
}

// ------------------------------------------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, key);
    try {
      await api("/v1/jobs?limit=1");
      $("#api-key").value = "";
      location.hash = "#/jobs";
      route();
    } catch (err) {
      sessionStorage.removeItem(KEY_STORAGE);
      flash(err.status === 401 ? "That API key is not valid." : `Sign-in failed: ${err.message}`);
    }
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#refresh-jobs").addEventListener("click", () => loadJobs(true));
  $("#status-filter").addEventListener("change", () => loadJobs(true));
  $("#jobs-more").addEventListener("click", () => loadJobs(false));
  $("#job-form").addEventListener("submit", submitJob);
  $("#sweep-cancel").addEventListener("click", cancelSweep);
  $("#job-form").addEventListener("change", syncForm);
  $("#job-cancel").addEventListener("click", async () => {
    try {
      renderJob(await api(`/v1/jobs/${state.jobId}/cancel`, { method: "POST" }));
    } catch (err) {
      flash(err.message);
    }
  });
  window.addEventListener("hashchange", route);
  syncForm();
  route();
});
