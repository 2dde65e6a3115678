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
  if (bar && p.total) {
    bar.value = (100 * p.epoch) / p.total;
    bar.className = "bar-" + data.state;
  } else if (bar && data.state === "succeeded") {
    bar.value = 100;
  }
  if (label && p.total) label.textContent = p.epoch + "/" + p.total;
  const losses = root.querySelector('[data-role="losses"]');
  if (losses && typeof p.train_loss === "number") {
    losses.textContent = p.train_loss.toFixed(4) + " / " + p.test_loss.toFixed(4);
  }
}

async function showThumbnail(row, jobId) {
  const cell = row.querySelector('[data-role="thumb"]');
  if (!cell) return;
  const response = await fetch(API + "/jobs/" + jobId);
  if (!response.ok) return;
  const job = await response.json();
  const prefer = ["figures/latent_scatter.thumb.png", "figures/embedding.thumb.png", "figures/embedding_pca.thumb.png", "figures/samples.thumb.png"];
  const thumb = prefer.map((n) => job.artifacts.find((a) => a.name === n)).find(Boolean) || job.artifacts.find((a) => a.kind === "thumbnail");
  if (!thumb) return;
  const img = document.createElement("img");
  img.src = thumb.url;
  img.alt = thumb.name;
  img.width = 96;
  img.loading = "lazy";
  cell.replaceChildren(img);
}

function follow(root, onEnd) {
  const jobId = root.dataset.jobId;
  const source = new EventSource(API + "/jobs/" + jobId + "/events");
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    updateProgress(root, data);
    root.dispatchEvent(new CustomEvent("lf:progress", { detail: data }));
  });
  source.addEventListener("end", (event) => {
    source.close();
    const data = JSON.parse(event.data);
    updateProgress(root, data);
    if (onEnd) onEnd(data);
  });
  source.onerror = () => {
    // The browser reconnects on its own; give up only when the page is going away.
    if (source.readyState === EventSource.CLOSED) source.close();
  };
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

function rememberToken() {
  // Type the API token once per tab: every form's token field is filled from it.
  const fields = document.querySelectorAll('input[name="api_token"]');
  const saved = sessionStorage.getItem("latentforge-token");
  fields.forEach((field) => {
    if (saved && !field.value) field.value = saved;
    field.addEventListener("change", () => {
      sessionStorage.setItem("latentforge-token", field.value);
      fields.forEach((other) => { if (!other.value) other.value = field.value; });
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  rememberToken();
  document.querySelectorAll("table.runs tr[data-job-id]").forEach((row) => {
    if (row.dataset.state === "queued" || row.dataset.state === "running") {
      follow(row, (data) => { if (data.state === "succeeded") showThumbnail(row, row.dataset.jobId); });
    }
  });
  wireCompare();
});

window.LatentForge = { follow, updateProgress };
