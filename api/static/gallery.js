// Live progress for every row or run page that is queued or running, over Server-Sent Events.
"use strict";

const API = document.body.dataset.api;

function updateProgress(root, data) {
  const state = root.querySelector('[data-role="state"]');
  if (state) {
    state.textContent = data.state;
    state.className = "state state-" + data.state;
  }
  root.dataset.state = data.state;
  const p = data.progress || {};
  const bar = root.querySelector('[data-role="bar"]');
  const label = root.querySelector('[data-role="progress-label"]');
  // Training counts epochs; other long work (an evaluation) counts named steps.
  const [done, of] = p.total ? [p.epoch, p.total] : p.steps ? [p.step, p.steps] : [null, null];
  if (bar && of) {
    bar.value = (100 * done) / of;
    bar.className = "bar-" + data.state;
  } else if (bar && data.state === "succeeded") {
    bar.value = 100;
  }
  if (label && of) label.textContent = done + "/" + of + (p.doing && data.state === "running" ? " " + p.doing : "");
  const eta = root.querySelector('[data-role="eta"]');
  if (eta) eta.textContent = timeLeft(data, eta);
  const losses = root.querySelector('[data-role="losses"]');
  if (losses && typeof p.train_loss === "number") {
    losses.textContent = p.train_loss.toFixed(4) + " / " + p.test_loss.toFixed(4);
  }
}

// "1 min 05 s", as the server's duration filter writes it (shared/humane.py).
function duration(seconds) {
  let s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  s %= 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d) return d + " d " + h + " h";
  if (h) return h + " h " + two(m) + " min";
  if (m) return m + " min " + two(s) + " s";
  return s + " s";
}

// A running job's time left from its pace so far; what the cell said before once it has ended.
function timeLeft(data, cell) {
  const p = data.progress || {};
  const [done, of] = p.total ? [p.epoch, p.total] : p.steps ? [p.step, p.steps] : [0, 0];
  const started = data.started_at || cell.dataset.started;
  if (data.state !== "running" || !done || !of || !started) return data.state === "running" ? "" : cell.textContent;
  const elapsed = (Date.now() - Date.parse(started)) / 1000;
  return duration((elapsed / done) * Math.max(0, of - done)) + " left";
}

async function showThumbnail(row, jobId) {
  const cell = row.querySelector('[data-role="thumb"]');
  if (!cell) return;
  const response = await fetch(API + "/jobs/" + jobId);
  if (!response.ok) return;
  const job = await response.json();
  const prefer = JSON.parse(document.getElementById("runs").dataset.thumbs || "[]"); // the server's headline figures
  const thumb = prefer.map((n) => job.artifacts.find((a) => a.name === n)).find(Boolean) || job.artifacts.find((a) => a.kind === "thumbnail");
  if (!thumb) return;
  const img = document.createElement("img");
  img.src = thumb.url;
  img.alt = thumb.name;
  img.width = 96;
  img.loading = "lazy";
  cell.replaceChildren(img);
}

const LIVE = new Set(["queued", "running"]);

// One stream for every live job on the page, however many rows it shows:
// a browser allows six connections per host, and a stream per row would use them all.
function followPage() {
  const byId = new Map();
  document.querySelectorAll("[data-job-id]").forEach((root) => {
    if (!LIVE.has(root.dataset.state)) return;
    if (!byId.has(root.dataset.jobId)) byId.set(root.dataset.jobId, []);
    byId.get(root.dataset.jobId).push(root);
  });
  if (!byId.size) return null;
  const pending = new Set(byId.keys());
  // A loss chart on the page wants each job's history in the stream's first event (after a reconnect too).
  const history = document.getElementById("loss-chart") ? "&history=1" : "";
  const source = new EventSource(API + "/events?jobs=" + Array.from(byId.keys()).slice(0, 100).join(",") + history);
  const each = (data, fn) => (byId.get(data.id) || []).forEach(fn);
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    each(data, (root) => {
      updateProgress(root, data);
      root.dispatchEvent(new CustomEvent("lf:progress", { detail: data }));
    });
  });
  source.addEventListener("end", (event) => {
    const data = JSON.parse(event.data);
    pending.delete(data.id);
    each(data, (root) => {
      updateProgress(root, data);
      root.dispatchEvent(new CustomEvent("lf:end", { detail: data }));
    });
    if (!pending.size) source.close(); // otherwise the browser would reconnect to a finished stream
  });
  // On an error the browser reconnects by itself (the server also ends each stream after a while).
  return source;
}

function wireCompare() {
  const button = document.getElementById("compare-selected");
  if (!button) return;
  const picks = () => Array.from(document.querySelectorAll("input.pick:checked")).map((c) => c.value);
  document.querySelectorAll("input.pick").forEach((box) =>
    box.addEventListener("change", () => { button.disabled = picks().length < 2; }));
  button.addEventListener("click", () => {
    window.location.href = "/compare?ids=" + picks().join(",");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.runs tr[data-job-id]").forEach((row) => {
    row.addEventListener("lf:end", (event) => {
      if (event.detail.state === "succeeded") showThumbnail(row, row.dataset.jobId);
    });
  });
  wireCompare();
  window.LatentForge.stream = followPage();
});

window.LatentForge = { followPage, updateProgress };

// The train form: only the chosen model's own fields are enabled (disabled fields are not submitted).
document.addEventListener("DOMContentLoaded", () => {
  const select = document.querySelector('[data-role="model-kind"]');
  if (!select) return;
  const sync = () => {
    for (const fieldset of select.form.querySelectorAll("fieldset.model-options")) {
      const on = fieldset.dataset.models.split(" ").includes(select.value);
      fieldset.disabled = !on;
      fieldset.hidden = !on;
    }
  };
  select.addEventListener("change", sync);
  sync();
});
