// Compare page: every run's loss curves in one chart, one colour per run.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("compare-chart");
  const curves = JSON.parse(chart.dataset.curves || "[]");
  const { drawChart, lossSeries, COLOURS } = window.LatentForgeChart;
  const series = curves.flatMap((c, i) => lossSeries(c.history, c.label + " ", COLOURS[i % COLOURS.length]));
  drawChart(chart, series.filter((s) => s.points.length));
});
