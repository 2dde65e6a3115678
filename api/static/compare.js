// Compare page: every run's metric curves overlaid, one colour per run (a panel per unit: losses, learning
// rates, speed); the legend chooses the metrics (shared by all runs), train_* solid and test_* dashed; log
// scale, smoothing and hover values as on the run page (chart.js).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("compare-chart");
  if (!chart) return;
  const { metricChart, parseJSON } = window.LatentForgeChart;
  let curves = parseJSON(chart.dataset.curves, []);
  if (!Array.isArray(curves)) curves = [];
  const runs = curves.map((c) => ({ id: c.id, label: c.label, history: Array.isArray(c.history) ? c.history : [] }));
  metricChart(chart, { runs, perRun: true, storageKey: "compare" });
});
