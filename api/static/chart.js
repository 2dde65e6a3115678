// A small SVG line chart (no library): series of {label, points: [[x, y], ...]}, and on top of it a
// metric chart: every numeric metric of a per-epoch history, chosen from an HTML legend, with a log scale.
//
// Hooks for tests: the legend is [data-role=metric-legend] with one button[data-metric=KEY][aria-pressed]
// per metric; the log toggle is input[data-role=log-scale]; each drawn series is the only kind of <path>
// in the chart's SVG and carries data-metric (and data-run on the compare page); the SVG has data-scale.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
// Keys of a history row that are not metrics: the x axis and timing.
const NOT_METRICS = new Set(["epoch", "seconds", "samples_per_s", "total"]);
const DEFAULT_METRICS = ["train_loss", "test_loss"];
// Marker shapes, one per base metric (loss, recon, kl, ...): on the compare page colour means the run.
// None of them is a <path>: the series lines are the only paths (tests count them).
const MARKERS = ["circle", "square", "triangle", "diamond", "triangle-down", "cross"];
const DASH = "6 4";
const NEUTRAL = "#475467";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  if (hi === lo) { hi = lo + 1; }
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  const err = (hi - lo) / count / step;
  const mult = err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
  const s = mult * step;
  const ticks = [];
  for (let t = Math.ceil(lo / s) * s; t <= hi + 1e-12; t += s) ticks.push(+t.toPrecision(12));
  return ticks;
}

// Ticks for a log axis over [lo, hi] (both > 0): 1-2-5 per decade when few decades, powers of ten otherwise.
function logTicks(lo, hi) {
  const e0 = Math.floor(Math.log10(lo)), e1 = Math.ceil(Math.log10(hi));
  const decades = e1 - e0;
  const mults = decades <= 1 ? [1, 2, 3, 5, 7] : decades <= 3 ? [1, 2, 5] : [1];
  const every = Math.max(1, Math.ceil(decades / 8));
  const ticks = [];
  for (let e = e0; e <= e1; e += every) {
    for (const m of mults) {
      const t = +(m * Math.pow(10, e)).toPrecision(12);
      if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push(t);
    }
  }
  return ticks.length >= 2 ? ticks : niceTicks(lo, hi, 4).filter((t) => t > 0);
}

function formatTick(t) {
  if (t === 0) return "0";
  const a = Math.abs(t);
  if (a >= 1e5 || a < 1e-3) return t.toExponential(1).replace(".0e", "e");
  return String(+t.toPrecision(4));
}

// A marker at (x, y); hollow (white with a coloured outline) for test series, so that train and test
// differ even where a series has one point and its dash cannot show.
function markerEl(shape, x, y, colour, hollow) {
  const el = markerShape(shape, x, y, colour);
  if (hollow) { el.setAttribute("fill", "#fff"); el.setAttribute("stroke", colour); el.setAttribute("stroke-width", 1.5); }
  return el;
}

function markerShape(shape, x, y, colour) {
  const r = 3;
  switch (shape) {
    case "square": return svgEl("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: colour });
    case "triangle": return svgEl("polygon", { points: `${x},${y - r - 1} ${x + r + 1},${y + r} ${x - r - 1},${y + r}`, fill: colour });
    case "triangle-down": return svgEl("polygon", { points: `${x},${y + r + 1} ${x + r + 1},${y - r} ${x - r - 1},${y - r}`, fill: colour });
    case "diamond": return svgEl("polygon", { points: `${x},${y - r - 1} ${x + r + 1},${y} ${x},${y + r + 1} ${x - r - 1},${y}`, fill: colour });
    case "cross": return svgEl("polygon", { points: [[-1, -3], [1, -3], [1, -1], [3, -1], [3, 1], [1, 1], [1, 3], [-1, 3], [-1, 1], [-3, 1], [-3, -1], [-1, -1]]
      .map(([dx, dy]) => `${x + dx * 1.2},${y + dy * 1.2}`).join(" "), fill: colour });
    default: return svgEl("circle", { cx: x, cy: y, r: 2.5, fill: colour });
  }
}

// series: [{label, points: [[x, y], ...], colour?, dashed?, marker?, metric?, run?}]
// opts: width, height, xLabel, yLabel, log (y axis), legend (draw the in-SVG legend; default true), emptyText.
function drawChart(container, series, opts) {
  // fractionalX: tick the x axis between integers too (epochs are whole; a swept lr is not).
  opts = Object.assign({ width: 760, height: 320, xLabel: "epoch", yLabel: "MSE loss", log: false, legend: true,
    emptyText: "No epochs yet.", fractionalX: false }, opts || {});
  const W = opts.width, H = opts.height, m = { l: 64, r: 16, t: 12, b: 44 };
  const usable = (p) => Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!opts.log || p[1] > 0);
  series = series.map((s) => Object.assign({}, s, { points: s.points.filter(usable) }));
  const all = series.flatMap((s) => s.points);
  container.replaceChildren();
  if (!all.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = opts.emptyText;
    container.appendChild(p);
    return null;
  }
  const fy = opts.log ? Math.log10 : (y) => y;
  const xs = all.map((p) => p[0]), ys = all.map((p) => fy(p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || (opts.log ? 0.1 : Math.abs(y0) * 0.1) || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y) => H - m.b - ((fy(y) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "line-chart", role: "img",
    "aria-label": opts.yLabel + " per " + opts.xLabel, "data-scale": opts.log ? "log" : "linear" });
  const yTicks = opts.log ? logTicks(Math.pow(10, y0), Math.pow(10, y1)) : niceTicks(y0, y1, 5);
  for (const t of yTicks) {
    svg.appendChild(svgEl("line", { x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: m.l - 6, y: sy(t) + 4, class: "tick", "text-anchor": "end" }, formatTick(t)));
  }
  for (const t of niceTicks(x0, x1, 8).filter((t) => opts.fractionalX || Number.isInteger(t))) {
    svg.appendChild(svgEl("text", { x: sx(t), y: H - m.b + 16, class: "tick", "text-anchor": "middle" }, String(t)));
  }
  svg.appendChild(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, opts.xLabel));
  svg.appendChild(svgEl("text", { x: 14, y: (m.t + H - m.b) / 2, class: "axis", "text-anchor": "middle",
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, opts.yLabel + (opts.log ? " (log)" : "")));
  let legendRow = 0;
  series.forEach((s, i) => {
    const colour = s.colour || COLOURS[i % COLOURS.length];
    if (s.points.length) {
      const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      const g = svgEl("g", { class: "series" });
      const path = svgEl("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": s.dashed ? DASH : "none" });
      if (s.metric !== undefined) path.setAttribute("data-metric", s.metric);
      if (s.run !== undefined) path.setAttribute("data-run", s.run);
      path.appendChild(svgEl("title", {}, s.label));
      g.appendChild(path);
      for (const p of s.points) g.appendChild(markerEl(s.marker, sx(p[0]), sy(p[1]), colour, s.dashed));
      svg.appendChild(g);
    }
    if (opts.legend) {
      const ly = m.t + 14 + legendRow++ * 16;
      svg.appendChild(svgEl("line", { x1: W - m.r - 150, x2: W - m.r - 130, y1: ly - 4, y2: ly - 4, stroke: colour, "stroke-width": 2,
        "stroke-dasharray": s.dashed ? DASH : "none" }));
      svg.appendChild(svgEl("text", { x: W - m.r - 124, y: ly, class: "legend" }, s.label));
    }
  });
  container.appendChild(svg);
  return svg;
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

// One series of a history: [[epoch, row[key]], ...] for the rows where it is a finite number.
function metricPoints(history, key) {
  return history.filter((h) => finite(h.epoch) && finite(h[key])).map((h) => [h.epoch, h[key]]);
}

function lossSeries(history, prefix, colour) {
  return [
    { label: (prefix || "") + "train", colour, metric: "train_loss", points: metricPoints(history, "train_loss") },
    { label: (prefix || "") + "test", colour, dashed: true, metric: "test_loss", points: metricPoints(history, "test_loss") },
  ];
}

function isMetricKey(key, value) {
  return !NOT_METRICS.has(key) && typeof value === "number";
}

// "test_kl" -> {split: "test", base: "kl"}; a key without a split prefix is its own base.
function splitMetric(key) {
  const match = /^(train|test)_(.+)$/.exec(key);
  return match ? { split: match[1], base: match[2] } : { split: "", base: key };
}

function metricLabel(key) {
  return key.replace(/_/g, " ");
}

// Every metric key of a history: loss first, then the other bases in the order they appear; train before test.
function metricKeys(history) {
  const keys = [];
  for (const row of history || []) {
    for (const [k, v] of Object.entries(row || {})) if (isMetricKey(k, v) && !keys.includes(k)) keys.push(k);
  }
  const bases = [];
  for (const k of keys) { const b = splitMetric(k).base; if (!bases.includes(b)) bases.push(b); }
  const baseRank = (b) => (b === "loss" ? -1 : bases.indexOf(b));
  const splitRank = { train: 0, test: 1, "": 2 };
  return keys.sort((a, b) => {
    const A = splitMetric(a), B = splitMetric(b);
    return baseRank(A.base) - baseRank(B.base) || splitRank[A.split] - splitRank[B.split];
  });
}

function metricBases(keys) {
  const bases = [];
  for (const k of keys) { const b = splitMetric(k).base; if (!bases.includes(b)) bases.push(b); }
  return bases;
}

// JSON.parse that survives the NaN / Infinity tokens Python's json.dumps writes for a diverged loss.
function parseJSON(text, fallback) {
  if (!text) return fallback;
  try {
    return JSON.parse(text);
  } catch (error) {
    try {
      return JSON.parse(text.replace(/-?\bInfinity\b|\bNaN\b/g, "null"));
    } catch (again) {
      return fallback;
    }
  }
}

function swatch(colour, dashed, marker) {
  const svg = svgEl("svg", { class: "swatch", width: 28, height: 12, viewBox: "0 0 28 12", "aria-hidden": "true", focusable: "false" });
  svg.appendChild(svgEl("line", { x1: 1, x2: 27, y1: 6, y2: 6, stroke: colour, "stroke-width": 2, "stroke-dasharray": dashed ? "5 3" : "none" }));
  if (marker) svg.appendChild(markerEl(marker, 14, 6, colour, dashed));
  return svg;
}

function loadChoices(storageKey) {
  try {
    const saved = JSON.parse(window.sessionStorage.getItem(storageKey) || "null");
    if (saved && typeof saved === "object") return saved;
  } catch (error) { /* storage off or garbled: start from the defaults */ }
  return {};
}

function saveChoices(storageKey, choices) {
  try { window.sessionStorage.setItem(storageKey, JSON.stringify(choices)); } catch (error) { /* storage off */ }
}

// A chart of every metric of one or more runs, with an HTML legend to choose the metrics and a log toggle.
// runs: [{id, label, history}]. options.perRun: colour per run (the compare page) rather than per metric,
// with a key of the runs' colours. options.storageKey: where the user's choices live for this tab
// (sessionStorage), so that they survive the reload at the end of a run. Returns {update(runs), visible(),
// setVisible(key, on), setLog(on)}: update redraws with new histories and keeps the user's choices.
function metricChart(container, options) {
  options = Object.assign({ runs: [], perRun: false, storageKey: null, xLabel: "epoch" }, options || {});
  const storageKey = options.storageKey && "latentforge.chart:" + options.storageKey;
  const saved = storageKey ? loadChoices(storageKey) : {};
  const choices = new Map(Object.entries(saved.metrics || {}).filter(([, v]) => typeof v === "boolean"));
  let logWanted = saved.log === true;
  let runs = options.runs;
  let keys = [];
  let legendSignature = null;

  const wrap = document.createElement("div");
  wrap.className = "metric-chart";
  const plot = document.createElement("div");
  plot.className = "chart-plot";
  const side = document.createElement("div");
  side.className = "chart-side";
  const legendTitle = document.createElement("p");
  legendTitle.className = "chart-side-title";
  legendTitle.id = (container.id || "chart") + "-metrics-title";
  legendTitle.textContent = "Metrics";
  const legend = document.createElement("div");
  legend.className = "metric-legend";
  legend.setAttribute("data-role", "metric-legend");
  legend.setAttribute("role", "group");
  legend.setAttribute("aria-labelledby", legendTitle.id);
  const logLabel = document.createElement("label");
  logLabel.className = "log-toggle";
  const logBox = document.createElement("input");
  logBox.type = "checkbox";
  logBox.setAttribute("data-role", "log-scale");
  logLabel.append(logBox, document.createTextNode(" Log scale"));
  side.append(legendTitle, legend, logLabel);
  let runLegend = null;
  if (options.perRun) {
    const runTitle = document.createElement("p");
    runTitle.className = "chart-side-title";
    runTitle.textContent = "Runs";
    runLegend = document.createElement("ul");
    runLegend.className = "run-legend";
    runLegend.setAttribute("data-role", "run-legend");
    side.append(runTitle, runLegend);
  }
  wrap.append(plot, side);
  container.replaceChildren(wrap);

  const save = () => storageKey && saveChoices(storageKey, { metrics: Object.fromEntries(choices), log: logWanted });

  // Shown: the user's choice where they made one; otherwise train/test loss (or, where a model reports
  // neither, the first metric's train/test pair), every other metric hidden.
  function defaults() {
    const shown = keys.filter((k) => DEFAULT_METRICS.includes(k));
    if (shown.length || !keys.length) return new Set(shown);
    const base = splitMetric(keys[0]).base;
    return new Set(keys.filter((k) => splitMetric(k).base === base));
  }
  function isVisible(key, fallback) {
    return choices.has(key) ? choices.get(key) : fallback.has(key);
  }
  function visible() {
    const fallback = defaults();
    return keys.filter((k) => isVisible(k, fallback));
  }

  function styleOf(key) {
    const bases = metricBases(keys);
    const { split, base } = splitMetric(key);
    const i = Math.max(0, bases.indexOf(base));
    return { dashed: split === "test", marker: MARKERS[i % MARKERS.length], colour: COLOURS[i % COLOURS.length] };
  }

  function renderLegend() {
    const signature = JSON.stringify(keys);
    if (signature === legendSignature) return;
    legendSignature = signature;
    const focused = legend.contains(document.activeElement) ? document.activeElement.getAttribute("data-metric") : null;
    legend.replaceChildren(...keys.map((key) => {
      const style = styleOf(key);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "metric-toggle";
      button.setAttribute("data-metric", key);
      button.append(swatch(options.perRun ? NEUTRAL : style.colour, style.dashed, style.marker),
        document.createTextNode(metricLabel(key)));
      button.addEventListener("click", () => {
        choices.set(key, button.getAttribute("aria-pressed") !== "true");
        save();
        redraw();
      });
      return button;
    }));
    if (focused) {
      const again = legend.querySelector(`[data-metric="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
    side.hidden = keys.length === 0;
  }

  function renderRunLegend() {
    if (!runLegend) return;
    runLegend.replaceChildren(...runs.map((r, i) => {
      const li = document.createElement("li");
      li.setAttribute("data-run", r.id);
      const empty = !metricKeys(r.history).length;
      li.append(swatch(COLOURS[i % COLOURS.length], false, null), document.createTextNode(r.label + (empty ? " (no epochs)" : "")));
      return li;
    }));
  }

  function redraw() {
    const shown = visible();
    for (const button of legend.querySelectorAll("button[data-metric]")) {
      button.setAttribute("aria-pressed", shown.includes(button.getAttribute("data-metric")) ? "true" : "false");
    }
    // Log scale only where every visible value is above zero.
    const offenders = shown.filter((k) => runs.some((r) => metricPoints(r.history, k).some((p) => p[1] <= 0)));
    const logAllowed = shown.length > 0 && offenders.length === 0;
    logBox.disabled = !logAllowed;
    logBox.checked = logAllowed && logWanted;
    const why = !shown.length ? "Log scale: no metric is shown."
      : offenders.length ? "Log scale needs every shown value above zero; " + offenders.map(metricLabel).join(", ") +
        (offenders.length === 1 ? " has" : " have") + " values at or below zero."
      : "Plot the y axis on a log scale.";
    logBox.title = why;
    logLabel.title = why;
    logLabel.classList.toggle("disabled", !logAllowed);

    const series = [];
    runs.forEach((r, i) => {
      for (const key of shown) {
        const points = metricPoints(r.history, key);
        if (!points.length) continue;
        const style = styleOf(key);
        series.push({
          label: (options.perRun ? r.label + " · " : "") + metricLabel(key), metric: key, points,
          run: options.perRun ? r.id : undefined, dashed: style.dashed, marker: style.marker,
          colour: options.perRun ? COLOURS[i % COLOURS.length] : style.colour,
        });
      }
    });
    const bases = metricBases(shown);
    drawChart(plot, series, {
      legend: false, log: logBox.checked, xLabel: options.xLabel,
      yLabel: bases.length === 1 ? metricLabel(bases[0]) : "value",
      emptyText: !keys.length ? "No epochs yet." : "No metric selected: choose one in the legend.",
    });
  }

  logBox.addEventListener("change", () => {
    logWanted = logBox.checked;
    save();
    redraw();
  });

  function update(newRuns) {
    runs = newRuns || runs;
    keys = metricKeys(runs.flatMap((r) => r.history || []));
    renderLegend();
    renderRunLegend();
    redraw();
  }
  update(runs);
  return {
    update,
    visible,
    setVisible(key, on) { choices.set(key, !!on); save(); redraw(); },
    setLog(on) { logWanted = !!on; save(); redraw(); },
  };
}

window.LatentForgeChart = {
  drawChart, lossSeries, COLOURS,
  metricChart, metricKeys, metricLabel, metricPoints, isMetricKey, splitMetric, logTicks, niceTicks, parseJSON,
};
