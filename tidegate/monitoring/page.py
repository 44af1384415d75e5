"""The status page monitoring serves at ``/``: one self-contained HTML document.

Inline CSS and JavaScript only (no CDN, no web fonts, nothing fetched but ``status`` and
``history`` beside it), because the page must work on a machine without internet. It polls both
every two seconds and renders the crisis level, the stage table, predictions, alerts, drift,
accuracy, automatic actions and SVG charts drawn by its own few lines of script. Every key the
analytics may not send yet is optional: a missing section says so and the rest still renders.
Data reaches the DOM only as text nodes and attribute values, never as markup.

Example::

    html = status_page()
    '<table id="stages">' in html    # True
"""

from __future__ import annotations

__all__ = ["status_page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1f2328}
header{display:flex;align-items:center;gap:16px;padding:12px 20px;background:#1f2328;color:#fff}
header h1{font-size:20px;margin:0;flex:1}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(640px,1fr));gap:14px;padding:14px}
section{background:#fff;border-radius:6px;padding:10px 14px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1;overflow-x:auto}
h2{font-size:15px;margin:2px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 8px;border-bottom:1px solid #e3e5e8;text-align:left;white-space:nowrap}
td{max-width:24em;overflow:hidden;text-overflow:ellipsis}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{font-size:22px;font-weight:700;padding:6px 18px;border-radius:6px;background:#6b7280}
.lv-normal{background:#15803d;color:#fff}.lv-warning{background:#ca8a04;color:#fff}
.lv-critical{background:#ea580c;color:#fff}.lv-emergency{background:#b91c1c;color:#fff}
.st-up{color:#15803d}.st-stale{color:#ca8a04}.st-unknown{color:#6b7280}
.warn{color:#b45309;font-weight:600}.muted{color:#6b7280}
svg{width:100%;height:auto;display:block}
svg .axis{stroke:#d0d4d9}svg text{font-size:11px;fill:#57606a}
svg polyline{fill:none;stroke-width:1.8}
"""

_BODY = """
<header><h1>tidegate</h1><span id="conn" class="muted">connecting</span>
<span id="crisis-note"></span><span id="crisis-level" class="badge">UNKNOWN</span></header>
<main>
<section class="wide"><h2>Stages</h2><table id="stages"></table></section>
<section><h2>Predictions</h2><div id="predictions"></div></section>
<section><h2>Active alerts</h2><div id="alerts"></div></section>
<section><h2>Throughput (predictions/s)</h2><svg id="chart-throughput"></svg></section>
<section><h2>Dead letters/s</h2><svg id="chart-dead-letters"></svg></section>
<section><h2>p99 latency per stage (ms)</h2><svg id="chart-latency"></svg></section>
<section><h2>Lag per stage (records)</h2><svg id="chart-lag"></svg></section>
<section><h2>Drift</h2><div id="drift"></div></section>
<section><h2>Accuracy per model version</h2><div id="accuracy"></div></section>
<section><h2>Recent automatic actions</h2><div id="actions"></div></section>
<section><h2>Dead letters by code</h2><div id="dead-letters"></div></section>
</main>
"""

_SCRIPT = """
"use strict";
const POLL_MS = @POLL_MS@, SVG_NS = "http://www.w3.org/2000/svg";
const LEVELS = ["NORMAL", "WARNING", "CRITICAL", "EMERGENCY"];
const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626"];
const colors = new Map();
let points = [], size = 720;

function kid(v) {
  return v instanceof Node ? v : document.createTextNode(v == null ? "-" : String(v));
}
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  node.append(...kids.map(kid));
  return node;
}
function svg(tag, attrs, ...kids) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  node.append(...kids.map(kid));
  return node;
}
function num(v, digits) {
  return typeof v === "number" && isFinite(v)
    ? v.toLocaleString("en-US", {maximumFractionDigits: digits || 0}) : "-";
}
function clock(t) {
  if (typeof t !== "number") return t == null ? "-" : String(t);
  return new Date(t > 1e12 ? t : t * 1000).toLocaleTimeString("en-GB");
}
function levelClass(level) { return LEVELS.includes(level) ? "lv-" + level.toLowerCase() : ""; }
function colorOf(name) {
  if (!colors.has(name)) colors.set(name, COLORS[colors.size % COLORS.length]);
  return colors.get(name);
}
function fill(id, ...kids) { document.getElementById(id).replaceChildren(...kids.map(kid)); }
// Long text is cut by the stylesheet; the whole of it stays readable on hover.
function cell(v, cls) {
  const shown = v == null ? "-" : String(v);
  return el("td", shown.length > 24 ? {class: cls || "", title: shown} : {class: cls || ""}, shown);
}
function muted(message) { return el("p", {class: "muted"}, message); }
function head(headers) {
  return el("thead", {}, el("tr", {}, ...headers.map(h => el("th", {}, h))));
}
function table(headers, rows) {
  return [head(headers), el("tbody", {}, ...rows.map(cells => el("tr", {}, ...cells.map(c =>
            c instanceof Node ? c : typeof c === "number" ? el("td", {class: "n"}, num(c, 3))
                                                          : cell(c)))))];
}
function boxed(headers, rows) { return el("table", {}, ...table(headers, rows)); }

function renderCrisis(s) {
  const level = s.crisis && typeof s.crisis.system === "string" ? s.crisis.system : null;
  const badge = document.getElementById("crisis-level");
  badge.textContent = level || "UNKNOWN";
  badge.className = "badge " + levelClass(level);
  fill("crisis-note", level ? "" : "no crisis level reported yet");
}
function renderStages(s) {
  const levels = (s.crisis && s.crisis.stages) || {};
  const rows = Object.entries(s.stages || {}).map(([name, i]) => {
    // Closed breakers are the normal case: name only the ones that are not.
    const all = Object.entries(i.breakers || {}), tripped = all.filter(([, v]) => v !== "closed");
    const breakers = tripped.length ? tripped.map(([k, v]) => k + " " + v).join(", ")
      : all.length ? "all " + all.length + " closed" : "-";
    colorOf(name);
    const state = ["up", "stale", "unknown"].includes(i.state) ? i.state : "unknown";
    return el("tr", {"data-stage": name}, el("th", {scope: "row"}, name),
      el("td", {class: "st-" + state}, i.state),
      el("td", {class: "n", title: (i.instances || []).join(", ")}, (i.instances || []).length),
      ...[i.records_in, i.records_out, i.dead_lettered, i.errors, i.lag]
        .map(v => el("td", {class: "n"}, num(v))),
      ...[i.latency_p50_ms, i.latency_p99_ms].map(v => el("td", {class: "n"}, num(v, 1))),
      cell(i.mode), cell(i.paused ? "paused" + (i.pause_reason ? ": " + i.pause_reason : "") : "no",
                         i.paused ? "warn" : ""),
      cell(breakers, tripped.length ? "warn" : ""), cell(i.model_version),
      el("td", {class: levelClass(levels[name])}, levels[name]));
  });
  fill("stages", head(["stage", "state", "instances", "in", "out", "dead-lettered", "errors",
    "lag", "p50 ms", "p99 ms", "mode", "paused", "breakers", "model", "crisis"]),
    el("tbody", {}, ...rows));
}
function renderPredictions(s) {
  const p = s.predictions || {}, paths = Object.entries(p.by_path || {});
  fill("predictions", boxed(["", "count"], [["total", p.total], ["flagged", p.flagged],
    ...paths.map(([path, n]) => ["path " + path, n])]));
}
function renderAlerts(s) {
  if (!Array.isArray(s.alerts)) return fill("alerts", muted("alerts not reported yet"));
  const active = s.alerts.filter(a => !["resolved", "cleared"].includes(a.status));
  if (!active.length) return fill("alerts", muted("no active alerts"));
  fill("alerts", boxed(["severity", "stage", "kind", "message", "since"], active.map(a => [
    cell(a.severity, levelClass(String(a.severity).toUpperCase()) || "warn"),
    a.stage, a.kind,    a.message, clock(a.since)])));
}
function renderDrift(s) {
  const d = s.drift;
  if (!d || typeof d !== "object") return fill("drift", muted("drift not reported yet"));
  const drifted = Array.isArray(d.drifted) ? d.drifted : [];
  const rows = Object.entries(d.features || {}).map(([name, f]) => [
    cell(name, drifted.includes(name) ? "warn" : ""), (f || {}).psi, (f || {}).ks]);
  if (d.score) rows.push([cell("score", drifted.includes("score") ? "warn" : ""),
                          d.score.psi, d.score.ks]);
  fill("drift", el("p", {class: "muted"}, "model " + (d.version || "-") + ", " + num(d.events)
    + " events; drifted: " + (drifted.join(", ") || "none")),
    boxed(["feature", "PSI", "KS"], rows));
}
function renderAccuracy(s) {
  const a = s.accuracy;
  if (!a || typeof a !== "object") return fill("accuracy", muted("no labelled predictions yet"));
  fill("accuracy", boxed(["version", "labelled", "accuracy", "precision", "recall", "brier", "ECE"],
    Object.entries(a).map(([v, m]) => [v, ...["labelled", "accuracy", "precision", "recall",
                                               "brier", "ece"].map(k => (m || {})[k])])));
}
function renderActions(s) {
  if (!Array.isArray(s.actions)) return fill("actions", muted("actions not reported yet"));
  if (!s.actions.length) return fill("actions", muted("no automatic actions"));
  fill("actions", boxed(["time", "target", "action", "reason"], s.actions.slice(-20).reverse()
    .map(x => [clock(x.time), x.target, x.action, x.reason])));
}
function renderDeadLetters(s) {
  const rows = [];
  for (const [stage, i] of Object.entries(s.stages || {}))
    for (const [code, n] of Object.entries(i.dead_letters_by_code || {}))
      rows.push([stage, code, n]);
  rows.sort((a, b) => b[2] - a[2]);
  fill("dead-letters", rows.length ? boxed(["stage", "code", "count"], rows) : muted("none"));
}

const CHARTS = [["chart-throughput", p => ({predictions: p.predictions_per_s})],
  ["chart-dead-letters", p => ({"dead letters": p.dead_letters_per_s})],
  ["chart-latency", p => p.latency_p99_ms], ["chart-lag", p => p.lag]];
function niceMax(v) {
  if (!(v > 0)) return 1;
  const unit = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 2.5, 5, 10].map(m => m * unit).find(m => m >= v);
}
function drawChart(box, pick) {
  const W = 640, H = 220, L = 52, R = 12, T = 26, B = 22, series = new Map();
  points.forEach((p, i) => {
    for (const [name, v] of Object.entries(pick(p) || {})) {
      if (!series.has(name)) series.set(name, new Array(points.length).fill(null));
      if (typeof v === "number" && isFinite(v)) series.get(name)[i] = [p.time, v];
    }
  });
  const all = [...series.values()].flat().filter(Boolean);
  const t0 = points.length ? points[0].time : 0, span = Math.max(all.length ?
    points[points.length - 1].time - t0 : 0, 1), top = niceMax(Math.max(0, ...all.map(v => v[1])));
  const x = t => L + (t - t0) / span * (W - L - R), y = v => H - B - v / top * (H - T - B);
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  const kids = [0, 0.5, 1].flatMap(f => [
    svg("line", {class: "axis", x1: L, x2: W - R, y1: y(top * f), y2: y(top * f)}),
    svg("text", {x: L - 6, y: y(top * f) + 4, "text-anchor": "end"}, num(top * f, 1))]);
  if (!all.length)
    kids.push(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no data yet"));
  else kids.push(svg("text", {x: L, y: H - 6}, clock(t0)),
                 svg("text", {x: W - R, y: H - 6, "text-anchor": "end"}, clock(t0 + span)));
  // Series keep the stage table's order and colours, whatever order they first appeared in.
  for (const name of series.keys()) colorOf(name);
  const order = [...colors.keys()], rank = ([name]) => order.indexOf(name);
  let legendX = L;
  for (const [name, values] of [...series].sort((a, b) => rank(a) - rank(b))) {
    const color = colorOf(name), runs = [[]];
    values.forEach(v => v ? runs[runs.length - 1].push(v) : runs.push([]));
    for (const run of runs.filter(r => r.length)) {
      kids.push(run.length === 1
        ? svg("circle", {cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5, fill: color})
        : svg("polyline", {stroke: color, "data-series": name,
            points: run.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1)).join(" ")}));
    }
    kids.push(svg("rect", {x: legendX, y: 6, width: 10, height: 10, fill: color}),
              svg("text", {x: legendX + 14, y: 15}, name));
    legendX += 24 + 7 * String(name).length;
  }
  box.replaceChildren(...kids);
}

function guard(id, render, arg) {
  try { render(arg); } catch (err) { fill(id, muted("cannot show this: " + err.message)); }
}
async function getJson(path) {
  const reply = await fetch(path, {cache: "no-store"});
  if (!reply.ok) throw new Error(path + " answered HTTP " + reply.status);
  return reply.json();
}
async function tick() {
  const since = points.length ? "?since=" + points[points.length - 1].time : "";
  const [status, history] = await Promise.allSettled(
    [getJson("status"), getJson("history" + since)]);
  if (status.status === "fulfilled") {
    const s = status.value || {};
    for (const [id, render] of [["crisis-note", renderCrisis], ["stages", renderStages],
        ["predictions", renderPredictions], ["alerts", renderAlerts], ["drift", renderDrift],
        ["accuracy", renderAccuracy], ["actions", renderActions],
        ["dead-letters", renderDeadLetters]]) guard(id, render, s);
    fill("conn", "updated " + clock(s.time));
  } else fill("conn", "monitoring does not answer: " + status.reason.message);
  if (history.status === "fulfilled" && Array.isArray((history.value || {}).points)) {
    size = history.value.size || size;
    points = points.concat(history.value.points).slice(-size);
    for (const [id, pick] of CHARTS) {
      // One chart that cannot draw keeps its last picture; the others still update.
      try { drawChart(document.getElementById(id), pick); } catch (err) { continue; }
    }
  }
  setTimeout(tick, POLL_MS);
}
tick();
"""


def status_page(*, poll_seconds: float = 2.0) -> str:
    """The whole page; it reads ``status`` and ``history`` relative to its own address."""
    script = _SCRIPT.replace("@POLL_MS@", str(max(100, int(poll_seconds * 1000))))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>tidegate status</title><style>{_STYLE}</style></head>\n"
            f"<body>{_BODY}<script>{script}</script></body></html>\n")
