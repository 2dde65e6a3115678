// A small SVG line chart (no library): series of {label, points: [[x, y], ...]}.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

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

function drawChart(container, series, opts) {
  opts = Object.assign({ width: 760, height: 320, xLabel: "epoch", yLabel: "MSE loss" }, opts || {});
  const W = opts.width, H = opts.height, m = { l: 64, r: 16, t: 12, b: 44 };
  const all = series.flatMap((s) => s.points);
  container.replaceChildren();
  if (!all.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No epochs yet.";
    container.appendChild(p);
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "line-chart", role: "img", "aria-label": opts.yLabel + " per " + opts.xLabel });
  for (const t of niceTicks(y0, y1, 5)) {
    svg.appendChild(svgEl("line", { x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: m.l - 6, y: sy(t) + 4, class: "tick", "text-anchor": "end" }, t.toPrecision(3)));
  }
  for (const t of niceTicks(x0, x1, 8).filter((t) => Number.isInteger(t))) {
    svg.appendChild(svgEl("text", { x: sx(t), y: H - m.b + 16, class: "tick", "text-anchor": "middle" }, String(t)));
  }
  svg.appendChild(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, opts.xLabel));
  svg.appendChild(svgEl("text", { x: 14, y: (m.t + H - m.b) / 2, class: "axis", "text-anchor": "middle",
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, opts.yLabel));
  series.forEach((s, i) => {
    const colour = s.colour || COLOURS[i % COLOURS.length];
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": s.dashed ? "6 4" : "none" }));
    for (const p of s.points) svg.appendChild(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colour }));
    const ly = m.t + 14 + i * 16;
    svg.appendChild(svgEl("line", { x1: W - m.r - 150, x2: W - m.r - 130, y1: ly - 4, y2: ly - 4, stroke: colour, "stroke-width": 2,
      "stroke-dasharray": s.dashed ? "6 4" : "none" }));
    svg.appendChild(svgEl("text", { x: W - m.r - 124, y: ly, class: "legend" }, s.label));
  });
  container.appendChild(svg);
}

function lossSeries(history, prefix, colour) {
  return [
    { label: (prefix || "") + "train", colour, points: history.map((h) => [h.epoch, h.train_loss]) },
    { label: (prefix || "") + "test", colour, dashed: true, points: history.map((h) => [h.epoch, h.test_loss]) },
  ];
}

window.LatentForgeChart = { drawChart, lossSeries, COLOURS };
