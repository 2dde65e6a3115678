// A small SVG line chart (no library): series of {label, points: [[x, y], ...]}, and on top of it a
// metric chart: every numeric column of a per-epoch history (losses and terms, learning rates, seconds,
// samples/s), chosen from an HTML legend, with a log scale, EMA smoothing and hover values.
//
// Hooks for tests: the legend is [data-role=metric-legend] with one button[data-metric=KEY][aria-pressed]
// per metric; the log toggle is input[data-role=log-scale]; the smoothing slider input[data-role=smoothing].
// Each drawn series is the only kind of <path> in the chart's SVGs and carries data-metric (and data-run on
// the compare page); with smoothing above 0 the raw values are a faint <polyline class="raw-line"> behind it
// (same data attributes). Metrics of different units get an SVG panel each ([data-family]), stacked on one
// epoch axis; each SVG has data-scale. Hovering the plot ([data-role=chart-plot], also focusable: arrow
// keys, Home, End, Escape) shows a vertical guide and [data-role=chart-tooltip] with [data-role=tooltip-epoch]
// and a row per series: [data-metric][data-run] with data-value (the plotted value, full precision) and
// data-raw (the history's own value).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
// Keys of a history row that are not metrics: the x axis, and the run's epoch count a progress event carries.
const NOT_METRICS = new Set(["epoch", "total"]);
const DEFAULT_METRICS = ["train_loss", "test_loss"];
// Unit families, in the order their panels stack: metrics of one family share a y axis; a family of its own
// per unit, so that seconds never squash a loss of 0.04 onto the x axis. axis: the y label (null: from the
// metrics shown); legend: the heading the family's buttons sit under.
const FAMILIES = [
  { id: "metric", axis: null, legend: "Losses and terms" },
  { id: "lr", axis: "learning rate", legend: "Learning rate" },
  { id: "seconds", axis: "seconds per epoch", legend: "Speed" },
  { id: "throughput", axis: "samples/s", legend: "Speed" },
];
const PANEL_HEIGHT = { single: 320, stacked: 210 };
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
  if (a >= 1e6 || a < 1e-4) return t.toExponential(1).replace(".0e", "e").replace("e+", "e");
  if (a >= 1e4) return String(+(t / 1000).toPrecision(4)) + "k";  // samples/s: 80k, 120k
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

// series: [{label, points: [[x, y], ...], raw?, colour?, dashed?, marker?, metric?, run?}]; raw: the unsmoothed
// points, drawn faint behind the line. opts: width, height, xLabel, yLabel, log (y axis), legend (draw the
// in-SVG legend; default true), xDomain ([x0, x1]: panels stacked on one axis share it), xTitle (write xLabel
// under the axis; stacked panels write it under the last one only), fractionalX (tick the x axis between
// integers too: epochs are whole, a swept lr is not).
// Returns null when no point is finite (and above zero on a log axis), else {svg, series, mark(x), toData(clientX),
// toClient(x)}: mark draws the hover guide and a dot on each series at data x (null hides them).
function renderChart(series, opts) {
  opts = Object.assign({ width: 760, height: PANEL_HEIGHT.single, xLabel: "epoch", yLabel: "MSE loss", log: false,
    legend: true, xDomain: null, xTitle: true, fractionalX: false }, opts || {});
  const W = opts.width, H = opts.height, m = { l: 64, r: 16, t: 12, b: opts.xTitle ? 44 : 26 };
  const usable = (p) => Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!opts.log || p[1] > 0);
  series = series.map((s, i) => Object.assign({}, s, {
    colour: s.colour || COLOURS[i % COLOURS.length],
    points: s.points.filter(usable), raw: s.raw ? s.raw.filter(usable) : null,
  }));
  const all = series.flatMap((s) => s.points.concat(s.raw || []));
  if (!all.length) return null;
  const fy = opts.log ? Math.log10 : (y) => y;
  const xs = all.map((p) => p[0]), ys = all.map((p) => fy(p[1]));
  let [x0, x1] = opts.xDomain || [Math.min(...xs), Math.max(...xs)];
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || (opts.log ? 0.1 : Math.abs(y0) * 0.1) || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y) => H - m.b - ((fy(y) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const xy = (p) => sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1);
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
  if (opts.xTitle) svg.appendChild(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, opts.xLabel));
  svg.appendChild(svgEl("text", { x: 14, y: (m.t + H - m.b) / 2, class: "axis", "text-anchor": "middle",
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, opts.yLabel + (opts.log ? " (log)" : "")));
  const tag = (el, s) => {
    if (s.metric !== undefined) el.setAttribute("data-metric", s.metric);
    if (s.run !== undefined) el.setAttribute("data-run", s.run);
    return el;
  };
  let legendRow = 0;
  series.forEach((s) => {
    const colour = s.colour;
    if (s.points.length) {
      const g = svgEl("g", { class: "series" });
      if (s.raw && s.raw.length) {
        g.appendChild(tag(svgEl("polyline", { class: "raw-line", points: s.raw.map(xy).join(" "), fill: "none", stroke: colour,
          "stroke-width": 1.5, "stroke-dasharray": s.dashed ? DASH : "none" }), s));
      }
      const d = s.points.map((p, j) => (j ? "L" : "M") + xy(p)).join(" ");
      const path = tag(svgEl("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": s.dashed ? DASH : "none" }), s);
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
  const hover = svgEl("g", { class: "hover", visibility: "hidden" });
  const guide = svgEl("line", { class: "hover-guide", y1: m.t, y2: H - m.b });
  svg.appendChild(hover);
  // Between the viewBox and the page: the SVG scales with its box (and keeps its aspect ratio).
  const toPage = (x, y, inverse) => {
    const ctm = svg.getScreenCTM();
    if (!ctm) return null;
    return new DOMPoint(x, y).matrixTransform(inverse ? ctm.inverse() : ctm);
  };
  return {
    svg, series,
    mark(x) {
      hover.replaceChildren();
      hover.setAttribute("visibility", x === null ? "hidden" : "visible");
      if (x === null) return;
      guide.setAttribute("x1", sx(x));
      guide.setAttribute("x2", sx(x));
      guide.setAttribute("data-x", x);
      hover.appendChild(guide);
      for (const s of series) {
        const p = s.points.find((q) => q[0] === x);
        if (p) hover.appendChild(svgEl("circle", { class: "hover-dot", cx: sx(p[0]), cy: sy(p[1]), r: 4.5, stroke: s.colour }));
      }
    },
    toData(clientX) {
      const local = toPage(clientX, 0, true);
      return local && x0 + ((local.x - m.l) / (W - m.l - m.r)) * (x1 - x0);
    },
    toClient(x) {
      return toPage(sx(x), m.t, false);
    },
  };
}

// A chart drawn into container, replacing what it held (or an empty-state line); returns its SVG or null.
function drawChart(container, series, opts) {
  opts = Object.assign({ emptyText: "No epochs yet." }, opts || {});
  const chart = renderChart(series, opts);
  if (!chart) {
    container.replaceChildren(emptyLine(opts.emptyText));
    return null;
  }
  container.replaceChildren(chart.svg);
  return chart.svg;
}

function emptyLine(text) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  return p;
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

// TensorBoard's smoothing: an exponential moving average with weight in [0, 1), debiased so that the first
// point is the first value (no pull towards zero). Weight 0 gives the points back unchanged.
function smooth(points, weight) {
  if (!(weight > 0)) return points;
  let last = 0;
  return points.map(([x, y], i) => {
    last = last * weight + (1 - weight) * y;
    return [x, last / (1 - Math.pow(weight, i + 1))];
  });
}

function isMetricKey(key, value) {
  return !NOT_METRICS.has(key) && typeof value === "number";
}

const isLearningRate = (key) => key === "lr" || key.startsWith("lr_");

// The unit family of a metric (see FAMILIES): its panel and its legend group.
function familyOf(key) {
  if (key === "seconds") return "seconds";
  if (key === "samples_per_s") return "throughput";
  return isLearningRate(key) ? "lr" : "metric";
}

const familyRank = (key) => FAMILIES.findIndex((f) => f.id === familyOf(key));

// "test_kl" -> {split: "test", base: "kl"}; a key without a split prefix is its own base.
function splitMetric(key) {
  const match = /^(train|test)_(.+)$/.exec(key);
  return match ? { split: match[1], base: match[2] } : { split: "", base: key };
}

function metricLabel(key) {
  if (key === "samples_per_s") return "samples/s";
  return key.replace(/_/g, " ");
}

// Every metric key of a history, family by family (FAMILIES); within one, loss first, then the other bases in
// the order they appear; train before test.
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
    return familyRank(a) - familyRank(b) || baseRank(A.base) - baseRank(B.base) || splitRank[A.split] - splitRank[B.split];
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

// A number for the tooltip: four significant digits, whole numbers above a thousand with separators.
function formatValue(v) {
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  if (a !== 0 && a < 1e-4) return v.toExponential(3).replace(/\.?0+e/, "e");
  return String(+v.toPrecision(4));
}

function element(name, className, text) {
  const el = document.createElement(name);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// A chart of every metric of one or more runs: an HTML legend to choose the metrics (grouped by unit family,
// each family shown in a panel of its own), a log toggle, a smoothing slider, and hover values.
// runs: [{id, label, history}]. options.perRun: colour per run (the compare page) rather than per metric,
// with a key of the runs' colours. options.storageKey: where the user's choices live for this tab
// (sessionStorage), so that they survive the reload at the end of a run. Returns {update(runs), visible(),
// setVisible(key, on), setLog(on), setSmoothing(weight)}: update redraws with new histories and keeps the
// user's choices.
function metricChart(container, options) {
  options = Object.assign({ runs: [], perRun: false, storageKey: null, xLabel: "epoch" }, options || {});
  const storageKey = options.storageKey && "latentforge.chart:" + options.storageKey;
  const saved = storageKey ? loadChoices(storageKey) : {};
  const choices = new Map(Object.entries(saved.metrics || {}).filter(([, v]) => typeof v === "boolean"));
  let logWanted = saved.log === true;
  const clampSmoothing = (w) => (finite(w) ? Math.min(0.99, Math.max(0, w)) : 0);
  let smoothing = clampSmoothing(saved.smoothing);
  let runs = options.runs;
  let keys = [];
  let legendSignature = null;
  let panels = []; // renderChart's results, one per unit family shown
  let hoverX = null;

  const base = container.id || "chart";
  const wrap = element("div", "metric-chart");
  // The plot: the panels and, over them, the tooltip. Focusable, so that arrow keys read the values too.
  const plot = element("div", "chart-plot");
  plot.setAttribute("data-role", "chart-plot");
  plot.tabIndex = 0;
  plot.setAttribute("aria-label", "Chart; hover, or use the arrow keys, to read each epoch's values");
  const canvas = element("div", "chart-panels");
  const tooltip = element("div", "chart-tooltip");
  tooltip.id = base + "-tooltip";
  tooltip.setAttribute("data-role", "chart-tooltip");
  tooltip.setAttribute("aria-live", "polite");
  tooltip.hidden = true;
  plot.setAttribute("aria-describedby", tooltip.id);
  plot.append(canvas, tooltip);

  const side = element("div", "chart-side");
  const legendTitle = element("p", "chart-side-title", "Metrics");
  legendTitle.id = base + "-metrics-title";
  const legend = element("div", "metric-legend");
  legend.setAttribute("data-role", "metric-legend");
  legend.setAttribute("role", "group");
  legend.setAttribute("aria-labelledby", legendTitle.id);
  const logLabel = element("label", "log-toggle");
  const logBox = document.createElement("input");
  logBox.type = "checkbox";
  logBox.setAttribute("data-role", "log-scale");
  logLabel.append(logBox, document.createTextNode(" Log scale"));
  const smoothLabel = element("label", "smoothing-control");
  smoothLabel.title = "An exponential moving average, as TensorBoard's: 0 draws the values as they are; " +
    "above 0 the raw line stays faint behind the smoothed one.";
  const smoothRow = element("span", "smoothing-row");
  const smoothInput = document.createElement("input");
  Object.assign(smoothInput, { type: "range", min: "0", max: "0.99", step: "0.01", value: String(smoothing) });
  smoothInput.setAttribute("data-role", "smoothing");
  const smoothValue = element("output", "smoothing-value", smoothing.toFixed(2));
  smoothValue.setAttribute("data-role", "smoothing-value");
  smoothRow.append(smoothInput, smoothValue);
  smoothLabel.append(document.createTextNode("Smoothing"), smoothRow);
  side.append(legendTitle, legend, logLabel, smoothLabel);
  let runLegend = null;
  if (options.perRun) {
    runLegend = element("ul", "run-legend");
    runLegend.setAttribute("data-role", "run-legend");
    side.append(element("p", "chart-side-title", "Runs"), runLegend);
  }
  wrap.append(plot, side);
  container.replaceChildren(wrap);

  const save = () => storageKey && saveChoices(storageKey, { metrics: Object.fromEntries(choices), log: logWanted, smoothing });

  // Shown: the user's choice where they made one; otherwise train/test loss (or, where a model reports
  // neither, the first metric's train/test pair), every other metric hidden.
  function defaults() {
    const shown = keys.filter((k) => DEFAULT_METRICS.includes(k));
    if (shown.length || !keys.length) return new Set(shown);
    const first = splitMetric(keys[0]).base;
    return new Set(keys.filter((k) => splitMetric(k).base === first));
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
    const { split, base: b } = splitMetric(key);
    const i = Math.max(0, bases.indexOf(b));
    return { dashed: split === "test", marker: MARKERS[i % MARKERS.length], colour: COLOURS[i % COLOURS.length] };
  }

  function renderLegend() {
    const signature = JSON.stringify(keys);
    if (signature === legendSignature) return;
    legendSignature = signature;
    const focused = legend.contains(document.activeElement) ? document.activeElement.getAttribute("data-metric") : null;
    // One group per legend heading (the two speed families share one).
    const groups = new Map();
    for (const key of keys) {
      const heading = FAMILIES.find((f) => f.id === familyOf(key)).legend;
      if (!groups.has(heading)) groups.set(heading, []);
      groups.get(heading).push(key);
    }
    legend.replaceChildren(...[...groups].map(([heading, members]) => {
      const group = element("div", "metric-group");
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", heading);
      if (groups.size > 1) group.append(element("p", "metric-group-title", heading));
      group.append(...members.map((key) => {
        const style = styleOf(key);
        const button = element("button", "metric-toggle");
        button.type = "button";
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
      return group;
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

  // The y label of a family's panel: its own unit, or for losses and terms the one base shown ("loss", "kl").
  function axisLabel(family, shownKeys) {
    if (family.axis) return family.axis;
    const bases = metricBases(shownKeys);
    return bases.length === 1 ? metricLabel(bases[0]) : "value";
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
    smoothInput.value = String(smoothing);
    smoothValue.textContent = smoothing.toFixed(2);

    const byFamily = FAMILIES.map((family) => ({ family, keys: shown.filter((k) => familyOf(k) === family.id), series: [] }));
    const xs = [];
    for (const panel of byFamily) {
      runs.forEach((r, i) => {
        for (const key of panel.keys) {
          const raw = metricPoints(r.history, key);
          if (!raw.length) continue;
          xs.push(...raw.map((p) => p[0]));
          const style = styleOf(key);
          panel.series.push({
            label: (options.perRun ? r.label + " · " : "") + metricLabel(key), metric: key,
            points: smooth(raw, smoothing), raw: smoothing > 0 ? raw : null, values: raw,
            run: options.perRun ? r.id : undefined, dashed: style.dashed, marker: style.marker,
            colour: options.perRun ? COLOURS[i % COLOURS.length] : style.colour,
          });
        }
      });
    }
    const drawn = byFamily.filter((p) => p.series.length);
    panels = [];
    drawn.forEach(({ family, keys: familyKeys, series }, i) => {
      const last = i === drawn.length - 1;
      const chart = renderChart(series, {
        legend: false, log: logBox.checked, xLabel: options.xLabel, yLabel: axisLabel(family, familyKeys), xTitle: last,
        height: drawn.length === 1 ? PANEL_HEIGHT.single : PANEL_HEIGHT.stacked - (last ? 0 : 18),
        xDomain: [Math.min(...xs), Math.max(...xs)],
      });
      if (!chart) return;
      chart.svg.setAttribute("data-family", family.id);
      panels.push(chart);
    });
    if (panels.length) {
      canvas.replaceChildren(...panels.map((p) => p.svg));
    } else {
      canvas.replaceChildren(emptyLine(!keys.length ? "No epochs yet." : "No metric selected: choose one in the legend."));
    }
    plot.classList.toggle("stacked", panels.length > 1);
    if (hoverX !== null && epochs().includes(hoverX)) showAt(hoverX);
    else hide();
  }

  // Every x of the drawn series, ascending: where the hover can stop.
  function epochs() {
    const all = new Set(panels.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q[0]))));
    return [...all].sort((a, b) => a - b);
  }

  function hide() {
    hoverX = null;
    for (const p of panels) p.mark(null);
    tooltip.hidden = true;
  }

  function showAt(x) {
    hoverX = x;
    for (const p of panels) p.mark(x);
    const head = element("div", "tip-head");
    head.setAttribute("data-role", "tooltip-epoch");
    head.setAttribute("data-x", x);
    head.textContent = options.xLabel + " " + x;
    const rows = [];
    for (const p of panels) {
      for (const s of p.series) {
        const i = s.points.findIndex((q) => q[0] === x);
        if (i < 0) continue;
        const value = s.points[i][1], raw = s.values.find((q) => q[0] === x)[1];
        const row = element("div", "tip-row");
        row.setAttribute("data-metric", s.metric);
        if (s.run !== undefined) row.setAttribute("data-run", s.run);
        row.setAttribute("data-value", String(value));
        row.setAttribute("data-raw", String(raw));
        // The raw value beside a smoothed one, where they differ at the precision shown.
        const rawText = s.raw && formatValue(raw) !== formatValue(value) ? "raw " + formatValue(raw) : "";
        row.append(swatch(s.colour, s.dashed, s.marker), element("span", "tip-label", s.label),
          element("span", "tip-value", formatValue(value)), element("span", "tip-raw", rawText));
        rows.push(row);
      }
    }
    tooltip.replaceChildren(head, ...rows);
    tooltip.hidden = false;
    // Beside the guide, on the side with room for it.
    const at = panels[0].toClient(x), box = plot.getBoundingClientRect();
    if (!at) return;
    const gx = at.x - box.left, gap = 12, width = tooltip.offsetWidth;
    const left = gx + gap + width <= plot.clientWidth ? gx + gap : Math.max(0, gx - gap - width);
    tooltip.style.left = left + "px";
    tooltip.style.top = Math.max(0, at.y - box.top) + "px";
  }

  function nearest(target) {
    const all = epochs();
    if (!all.length || target === null) return null;
    return all.reduce((best, x) => (Math.abs(x - target) < Math.abs(best - target) ? x : best), all[0]);
  }

  plot.addEventListener("pointermove", (event) => {
    if (!panels.length) return;
    const x = nearest(panels[0].toData(event.clientX));
    if (x !== null && x !== hoverX) showAt(x);
  });
  plot.addEventListener("pointerleave", () => { if (document.activeElement !== plot) hide(); });
  plot.addEventListener("focus", () => { if (hoverX === null && epochs().length) showAt(epochs().at(-1)); });
  plot.addEventListener("blur", hide);
  plot.addEventListener("keydown", (event) => {
    const all = epochs();
    if (!all.length) return;
    const i = hoverX === null ? all.length : all.indexOf(hoverX);
    const to = { ArrowLeft: Math.max(0, i - 1), ArrowRight: Math.min(all.length - 1, i + 1), Home: 0, End: all.length - 1 }[event.key];
    if (event.key === "Escape") hide();
    else if (to !== undefined) showAt(all[to]);
    else return;
    event.preventDefault();
  });

  logBox.addEventListener("change", () => {
    logWanted = logBox.checked;
    save();
    redraw();
  });
  smoothInput.addEventListener("input", () => {
    smoothing = clampSmoothing(parseFloat(smoothInput.value));
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
    setSmoothing(weight) { smoothing = clampSmoothing(weight); save(); redraw(); },
  };
}

window.LatentForgeChart = {
  drawChart, lossSeries, COLOURS,
  metricChart, metricKeys, metricLabel, metricPoints, isMetricKey, splitMetric, logTicks, niceTicks, parseJSON,
};
