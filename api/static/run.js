// The run page: live metric chart and state; reload once the run ends so its figures appear.
// Progress events carry the whole history (the first of a stream) or the latest epoch's row: the curves
// grow by one point per epoch. The user's legend choices survive redraws and the reload (sessionStorage).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  const chart = document.getElementById("loss-chart");
  const { metricChart, metricKeys, parseJSON } = window.LatentForgeChart;
  const runId = run.dataset.jobId;
  let history = chart ? parseJSON(chart.dataset.history, []) : [];
  if (!Array.isArray(history)) history = [];
  const view = chart && metricChart(chart, { runs: [{ id: runId, label: "", history }], storageKey: window.location.pathname });
  const draw = () => view && view.update([{ id: runId, label: "", history }]);
  run.addEventListener("lf:progress", (event) => {
    const stateText = document.querySelector('[data-role="state-text"]');
    if (stateText) stateText.textContent = event.detail.state;
    const p = event.detail.progress || {};
    if (Array.isArray(p.history)) {
      history = p.history; // the first event of a stream carries the whole history
    } else if (typeof p.epoch === "number") {
      // Keep every numeric key of the row (each metric, and the timing), not the run's epoch count.
      const row = {};
      for (const [k, v] of Object.entries(p)) if (typeof v === "number" && k !== "total") row[k] = v;
      if (!metricKeys([row]).length) return;
      history = history.filter((h) => h.epoch < p.epoch);
      history.push(row);
    } else {
      return;
    }
    draw();
  });
  run.addEventListener("lf:end", () => window.location.reload());
});
