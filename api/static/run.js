// The run page: live loss curve and state; reload once the run ends so its figures appear.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  const chart = document.getElementById("loss-chart");
  let history = chart ? JSON.parse(chart.dataset.history || "[]") : [];
  const draw = () => chart && window.LatentForgeChart.drawChart(chart, window.LatentForgeChart.lossSeries(history));
  draw();
  if (run.dataset.state === "queued" || run.dataset.state === "running") {
    run.addEventListener("lf:progress", (event) => {
      const stateText = document.querySelector('[data-role="state-text"]');
      if (stateText) stateText.textContent = event.detail.state;
      const h = (event.detail.progress || {}).history;
      if (Array.isArray(h) && h.length !== history.length) {
        history = h;
        draw();
      }
    });
    window.LatentForge.follow(run, () => window.location.reload());
  }
});
