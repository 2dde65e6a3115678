// The run page: live loss curve and state; reload once the run ends so its figures appear.
// Progress events carry the latest epoch only: the curve grows by one point per epoch.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  const chart = document.getElementById("loss-chart");
  let history = chart ? JSON.parse(chart.dataset.history || "[]") : [];
  const draw = () => chart && window.LatentForgeChart.drawChart(chart, window.LatentForgeChart.lossSeries(history));
  draw();
  run.addEventListener("lf:progress", (event) => {
    const stateText = document.querySelector('[data-role="state-text"]');
    if (stateText) stateText.textContent = event.detail.state;
    const p = event.detail.progress || {};
    if (Array.isArray(p.history)) {
      history = p.history; // the first event of a stream carries the whole history
    } else if (typeof p.epoch === "number" && typeof p.train_loss === "number") {
      history = history.filter((h) => h.epoch < p.epoch);
      history.push({ epoch: p.epoch, train_loss: p.train_loss, test_loss: p.test_loss });
    } else {
      return;
    }
    draw();
  });
  run.addEventListener("lf:end", () => window.location.reload());
});
