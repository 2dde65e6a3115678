// Sweep page: any metric of the children against any parameter the sweep varies, one line per value of a
// second parameter, each point the mean over the runs that share it (the seeds), dashed lines at mean ± sd.
//
// Hooks for tests: the chart's SVG paths carry data-metric and data-group; a parameter whose values are not
// numbers is drawn at positions 0, 1, 2, ... named in the axis label.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("sweep-chart");
  if (!chart) return;
  const { drawChart, parseJSON, COLOURS } = window.LatentForgeChart;
  const rows = parseJSON(chart.dataset.rows, []);
  const pick = (role) => document.querySelector(`[data-role=${role}]`);
  const [metricSelect, xSelect, groupSelect] = ["sweep-metric", "sweep-x", "sweep-group"].map(pick);

  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
  const sd = (v) => (v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean(v)) ** 2, 0) / (v.length - 1)) : 0);
  const key = (v) => JSON.stringify(v);

  function draw() {
    const metric = metricSelect && metricSelect.value, xKey = xSelect && xSelect.value;
    const groupKey = groupSelect && groupSelect.value;
    if (!metric || !xKey) return;
    const measured = rows.filter((r) => typeof r.metrics[metric] === "number");
    const xValues = [...new Set(measured.map((r) => key(r.params[xKey])))].map((k) => JSON.parse(k));
    const numeric = xValues.every((v) => typeof v === "number");
    if (!numeric) xValues.sort((a, b) => key(a).localeCompare(key(b)));
    const position = (v) => (numeric ? v : xValues.findIndex((x) => key(x) === key(v)));
    const groups = new Map();
    for (const r of measured) {
      const g = groupKey ? key(r.params[groupKey]) : "";
      if (!groups.has(g)) groups.set(g, new Map());
      const byX = groups.get(g), x = position(r.params[xKey]);
      if (!byX.has(x)) byX.set(x, []);
      byX.get(x).push(r.metrics[metric]);
    }
    const series = [];
    [...groups.entries()].forEach(([g, byX], i) => {
      const colour = COLOURS[i % COLOURS.length];
      const xs = [...byX.keys()].sort((a, b) => a - b);
      const stats = xs.map((x) => [x, mean(byX.get(x)), sd(byX.get(x))]);
      const label = groupKey ? `${groupKey}=${g}` : metric;
      series.push({ label, colour, metric, group: g, points: stats.map(([x, m]) => [x, m]) });
      if (stats.some(([, , s]) => s > 0)) {
        series.push({ label: label + " ± sd", colour, dashed: true, metric, group: g,
          points: stats.map(([x, m, s]) => [x, m + s]) });
        series.push({ label: "", colour, dashed: true, metric, group: g, points: stats.map(([x, m, s]) => [x, m - s]) });
      }
    });
    const xLabel = numeric ? xKey : `${xKey} (${xValues.map((v, i) => `${i}=${typeof v === "string" ? v : key(v)}`).join(", ")})`;
    const svg = drawChart(chart, series, { xLabel, yLabel: metricSelect.selectedOptions[0].textContent,
      emptyText: "No child has this number yet.", fractionalX: numeric });
    if (svg) {
      const paths = svg.querySelectorAll("path");
      series.filter((s) => s.points.length).forEach((s, i) => paths[i] && paths[i].setAttribute("data-group", s.group));
    }
  }

  for (const select of [metricSelect, xSelect, groupSelect]) if (select) select.addEventListener("change", draw);
  draw();
});
