// maskwatch console: plain JavaScript, no build step, nothing fetched from outside the device.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const COLOURS = { with_mask: "#3a9a3a", without_mask: "#d03b3b", mask_weared_incorrect: "#e0a000" };
const KEYS = { m: "with_mask", n: "without_mask", x: "skip" };
// What a person reads for each label (the model's own names are for machines)
const NAMES = { with_mask: "mask", without_mask: "no mask", mask_weared_incorrect: "mask worn wrong",
  skip: "skipped", unknown: "undecided" };
const named = (label) => NAMES[label] || String(label).replace(/_/g, " ");
// Times in the browser's own time zone: the agent sends UTC
const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
const state = { tiles: [], cursor: 0, selected: new Set(), showLabelled: false, advice: 20 };

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function say(text, isError) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function refreshStatus() {
  try {
    const s = await api("/console/api/status");
    $("st-source").textContent = s.source;
    $("st-broker").textContent = s.broker_connected ? "connected" : "not connected";
    $("st-fps").textContent = s.fps;
    $("st-outbox").textContent = `${s.outbox_depth} waiting`;
    $("st-head").textContent = `${s.model.head} (${s.model.name})`;
    $("status-line").textContent = `${s.source} · ${s.broker_connected ? "broker ok" : "no broker"}`;
    state.advice = s.advice_per_class;
    if (s.samples) showCounts(s.samples);
    else $("counts").textContent = "Collection is off (adapt.collect: false): nothing to label.";
  } catch (e) { say(`status: ${e.message}`, true); }
}

function showCounts(c) {
  $("counts").textContent =
    `mask ${c.with_mask} · no mask ${c.without_mask} · skipped ${c.skip} · to label ${c.unlabelled}`;
  const short = Math.min(c.with_mask, c.without_mask) < state.advice;
  $("advice").textContent = short
    ? `Label at least ${state.advice} per class before adapting (5 is the minimum).`
    : "Enough labels to adapt.";
}

async function refreshPeople() {
  try {
    const p = await api("/console/api/people?hours=6");
    drawChart(p.chart);
    $("recent").replaceChildren(...p.recent.map((e) => {
      const li = document.createElement("li");
      li.textContent = `${when(e.ts)} · person #${e.track_id} ${e.type}: ${named(e.label)} (${Number(e.confidence).toFixed(2)})`;
      return li;
    }));
  } catch (e) { say(`people: ${e.message}`, true); }
}

// Data goes into the page as text and attributes, never as markup (no innerHTML): a
// label comes from the model bundle and is not HTML. The console's CSP forbids inline
// scripts as well.
const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// People per bin, stacked by label, drawn at the SVG's real width so that "now" is the
// right edge at any window size: a count axis on the left, local times below.
const CHART_HEIGHT = 150, AXIS_LEFT = 28, AXIS_BOTTOM = 18, TOP_PAD = 8;
let lastChart = null;

function niceTop(value) {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
  return steps.find((s) => s >= value) || Math.ceil(value / 1000) * 1000;
}

function drawChart(chart) {
  lastChart = chart;
  const svg = $("chart");
  const width = Math.max(200, Math.round(svg.getBoundingClientRect().width || 360));
  svg.setAttribute("viewBox", `0 0 ${width} ${CHART_HEIGHT}`);
  const labels = Object.keys(chart.series);
  const bins = labels.length ? chart.series[labels[0]].length : 36;
  const totals = Array.from({ length: bins }, (_, i) =>
    labels.reduce((sum, l) => sum + chart.series[l][i], 0));
  const top = niceTop(Math.max(1, ...totals));
  const plotW = width - AXIS_LEFT, plotH = CHART_HEIGHT - AXIS_BOTTOM - TOP_PAD;
  const binW = plotW / bins, baseY = TOP_PAD + plotH;
  const parts = [];
  for (const value of top % 2 ? [0, top] : [0, top / 2, top]) {  // whole counts, gridlines
    const y = baseY - (value / top) * plotH;
    parts.push(svgElement("line", { x1: AXIS_LEFT, x2: width, y1: y, y2: y, class: "grid" }));
    parts.push(svgElement("text", { x: AXIS_LEFT - 4, y: y + 4, class: "axis", "text-anchor": "end" },
      String(Math.round(value))));
  }
  for (let i = 0; i < bins; i++) {
    let y = baseY;
    for (const label of labels) {
      const count = chart.series[label][i];
      const h = (count / top) * plotH;
      if (h > 0) {
        y -= h;
        const rect = svgElement("rect", { x: AXIS_LEFT + i * binW, y, width: Math.max(1, binW - 1),
          height: h, fill: COLOURS[label] || "#888" });
        const from = chart.start + i * chart.bin_s;
        rect.append(svgElement("title", {}, `${clock(from)}–${clock(from + chart.bin_s)}: ${count} ${named(label)}`));
        parts.push(rect);
      }
    }
  }
  // times on the hour, at least 70 px apart (every hour wide, every 2 or 3 on a phone),
  // none crowding "now" at the right edge
  const span = bins * chart.bin_s, hour = 3600;
  const step = hour * Math.max(1, Math.ceil(70 / (plotW * hour / span)));
  for (let t = Math.ceil(chart.start / step) * step; t < chart.start + span; t += step) {
    const x = AXIS_LEFT + ((t - chart.start) / span) * plotW;
    if (x > 30 && x < width - 60)
      parts.push(svgElement("text", { x, y: CHART_HEIGHT - 4, class: "axis", "text-anchor": "middle" }, clock(t)));
  }
  parts.push(svgElement("text", { x: width - 2, y: CHART_HEIGHT - 4, class: "axis", "text-anchor": "end" }, "now"));
  svg.replaceChildren(...parts);
  const total = (l) => chart.series[l].reduce((a, b) => a + b, 0);
  $("legend").replaceChildren(...labels.map((l) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "legend-swatch";
    swatch.style.background = COLOURS[l] || "#888";
    item.append(swatch, document.createTextNode(`${named(l)}: ${total(l)}`));
    return item;
  }));
  if (!labels.length) $("legend").textContent = "No one yet in this window.";
}

window.addEventListener("resize", () => { if (lastChart) drawChart(lastChart); });

async function loadSamples() {
  try {
    const which = state.showLabelled ? "labelled" : "unlabelled";
    const data = await api(`/console/api/samples?state=${which}&limit=200`);
    state.tiles = data.samples;
    state.cursor = Math.min(state.cursor, Math.max(0, state.tiles.length - 1));
    state.selected.clear();
    showCounts(data.counts);
    renderGrid();
  } catch (e) { say(`samples: ${e.message}`, true); }
}

function renderGrid() {
  $("grid").replaceChildren(...state.tiles.map((s, i) => {
    const tile = document.createElement("div");
    tile.className = "tile" + (i === state.cursor ? " cursor" : "") +
      (state.selected.has(s.id) ? " selected" : "");
    tile.dataset.id = s.id;
    if (s.label) tile.dataset.label = s.label;
    const img = document.createElement("img");
    img.src = `/console/api/crops/${s.id}.jpg`;
    img.alt = `face ${s.id}`;
    const pred = document.createElement("div");
    pred.className = "pred";
    pred.textContent = s.label ? `✓ ${named(s.label)}` : `seen as ${named(s.predicted)} ${s.confidence.toFixed(2)}`;
    tile.append(img, pred);
    tile.addEventListener("click", () => {
      state.cursor = i;
      if (state.selected.has(s.id)) state.selected.delete(s.id); else state.selected.add(s.id);
      renderGrid();
    });
    return tile;
  }));
}

async function label(ids, value) {
  if (!ids.length) return;
  try {
    const result = await api("/console/api/label", { ids, label: value });
    for (const tile of state.tiles) if (ids.includes(tile.id)) tile.label = value;
    showCounts(result.counts);
    say(`${result.changed} labelled ${named(value)}`);
    renderGrid();
  } catch (e) { say(`label: ${e.message}`, true); }
}

function moveCursor(step) {
  if (!state.tiles.length) return;
  state.cursor = Math.max(0, Math.min(state.tiles.length - 1, state.cursor + step));
  renderGrid();
}

document.addEventListener("keydown", async (event) => {
  if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const value = KEYS[event.key];
  if (value && state.tiles.length) {
    event.preventDefault();
    const ids = state.selected.size ? [...state.selected] : [state.tiles[state.cursor].id];
    const advance = !state.selected.size;
    await label(ids, value);
    state.selected.clear();
    if (advance) moveCursor(1); else renderGrid();
  } else if (event.key === "ArrowRight") { moveCursor(1); }
  else if (event.key === "ArrowLeft") { moveCursor(-1); }
  else if (event.key === " " && state.tiles.length) {
    event.preventDefault();
    const id = state.tiles[state.cursor].id;
    if (state.selected.has(id)) state.selected.delete(id); else state.selected.add(id);
    renderGrid();
  }
});

function metricRows(report) {
  const row = (name, before, after) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = name;
    tr.append(th);
    for (const value of [before, after]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    return tr;
  };
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)} %`);
  const after = report.after.site ? report.after : { site: {}, anchors: {} };
  return [
    row("site balanced accuracy", pct(report.before.site.balanced_accuracy), pct(after.site.balanced_accuracy)),
    row("site no-mask recall", pct(report.before.site.no_mask_recall), pct(after.site.no_mask_recall)),
    row("anchors accuracy", pct(report.before.anchors.accuracy), pct(after.anchors.accuracy)),
    row("labelled faces set right / wrong", "", after.site.fixed === undefined ? "–" :
      `${after.site.fixed} / ${after.site.broken}`),
  ];
}

async function adapt(accept) {
  say(accept ? "installing…" : "fitting…");
  try {
    const report = await api("/console/api/adapt", { accept });
    $("adapt-result").hidden = false;
    $("adapt-summary").textContent = report.reason;
    $("adapt-table").replaceChildren(...metricRows(report));
    $("accept").hidden = accept || !report.accepted;
    say(report.installed ? `site head ${report.head} installed` :
      report.accepted ? "Better on this site: accept it?" : "The current head stays.");
    refreshStatus();
  } catch (e) { say(`adapt: ${e.message}`, true); }
}

async function revert() {
  try {
    const result = await api("/console/api/revert", {});
    say(result.reverted ? "back to the bundle's head" : "no site head was in use");
    $("accept").hidden = true;
    refreshStatus();
  } catch (e) { say(`revert: ${e.message}`, true); }
}

$("bulk-mask").addEventListener("click", () => label([...state.selected], "with_mask"));
$("bulk-nomask").addEventListener("click", () => label([...state.selected], "without_mask"));
$("bulk-skip").addEventListener("click", () => label([...state.selected], "skip"));
$("show-labelled").addEventListener("click", () => {
  state.showLabelled = !state.showLabelled;
  $("show-labelled").textContent = state.showLabelled ? "Show unlabelled" : "Show labelled";
  loadSamples();
});
$("adapt").addEventListener("click", () => adapt(false));
$("accept").addEventListener("click", () => adapt(true));
$("revert").addEventListener("click", revert);

refreshStatus();
refreshPeople();
loadSamples();
setInterval(refreshStatus, 5000);
setInterval(refreshPeople, 30000);
