// Latent explorer: decode any point of a 2-D latent plane in the browser.
// The train job exports its decoder as safetensors: an 8-byte little-endian
// header length, a JSON header (dtype, shape, byte offsets, metadata with the
// layer plan), then the raw little-endian float32 weights.
"use strict";

const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function parseSafetensors(buffer) {
  const view = new DataView(buffer);
  const headerLen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLen)));
  const metadata = header.__metadata__ || {};
  delete header.__metadata__;
  const base = 8 + headerLen;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    const [start, end] = info.data_offsets;
    const bytes = buffer.slice(base + start, base + end); // a copy: aligned for typed arrays
    const Typed = { F32: Float32Array, U8: Uint8Array }[info.dtype];
    if (!Typed) throw new Error("unsupported dtype " + info.dtype + " in " + name);
    tensors[name] = { shape: info.shape, data: new Typed(bytes) };
  }
  return { tensors, metadata };
}

// The likelihood's mean from the last layer's output, by the metadata's `output`: "identity" (or absent,
// the decoders exported before it existed) passes it through; "sigmoid" (Bernoulli likelihood: the last
// layer gives logits) maps each logit to its probability.
const OUTPUTS = {
  identity: (x) => x,
  sigmoid: (x) => {
    if (x >= 0) return 1 / (1 + Math.exp(-x));
    const e = Math.exp(x); // stable for large negative logits: exp(-x) would overflow
    return e / (1 + e);
  },
};

function outputFunction(metadata) {
  const name = metadata.output === undefined ? "identity" : metadata.output;
  if (!Object.prototype.hasOwnProperty.call(OUTPUTS, name)) {
    throw new Error("unknown decoder output " + JSON.stringify(name) + " (this page knows " +
      Object.keys(OUTPUTS).map((k) => JSON.stringify(k)).join(" and ") + ")");
  }
  return OUTPUTS[name];
}

function makeDecoder(parsed) {
  const output = outputFunction(parsed.metadata);
  const plan = JSON.parse(parsed.metadata.layers);
  const layers = plan.map((step, i) => ({
    ...step,
    weight: parsed.tensors["layers." + i + ".weight"].data,
    bias: parsed.tensors["layers." + i + ".bias"].data,
  }));
  return function decode(z) {
    let h = Float32Array.from(z);
    for (const layer of layers) {
      const out = new Float32Array(layer.out);
      for (let j = 0; j < layer.out; j++) {
        let acc = layer.bias[j];
        const row = j * layer.in;
        for (let i = 0; i < layer.in; i++) acc += layer.weight[row + i] * h[i];
        out[j] = layer.activation === "relu" ? Math.max(0, acc) : acc;
      }
      h = out;
    }
    if (output !== OUTPUTS.identity) for (let j = 0; j < h.length; j++) h[j] = output(h[j]);
    return h;
  };
}

function toPixels(values) {
  // The decoder's mean (after its output function): clip to [0, 1] for display, as the server's figures do.
  const pixels = new Uint8ClampedArray(values.length);
  for (let i = 0; i < values.length; i++) pixels[i] = Math.round(Math.min(1, Math.max(0, values[i])) * 255);
  return pixels;
}

async function fetchBuffer(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error("fetching " + url + " failed: " + response.status);
  return response.arrayBuffer();
}

document.addEventListener("DOMContentLoaded", async () => {
  const root = document.getElementById("explorer");
  const status = document.getElementById("explorer-status");
  const plane = document.getElementById("plane");
  const decodedCanvas = document.getElementById("decoded");
  const coordsLabel = document.getElementById("coords");
  const pinList = document.getElementById("pins");
  const pinnedInput = document.getElementById("pinned-coords");
  const serverButton = document.getElementById("decode-on-server");
  const legend = document.getElementById("legend");
  let decoder, shape, bounds, background;
  const pins = [];

  function planeBounds(codes) {
    if (!codes || !codes.length) return { x0: -4, x1: 4, y0: -4, y1: 4 };
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < codes.length; i += 2) {
      x0 = Math.min(x0, codes[i]); x1 = Math.max(x1, codes[i]);
      y0 = Math.min(y0, codes[i + 1]); y1 = Math.max(y1, codes[i + 1]);
    }
    const px = (x1 - x0) * 0.05 || 1, py = (y1 - y0) * 0.05 || 1;
    return { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
  }

  const toCanvas = (z) => [((z[0] - bounds.x0) / (bounds.x1 - bounds.x0)) * plane.width,
                           ((bounds.y1 - z[1]) / (bounds.y1 - bounds.y0)) * plane.height];
  const toLatent = (px, py) => [bounds.x0 + (px / plane.width) * (bounds.x1 - bounds.x0),
                                bounds.y1 - (py / plane.height) * (bounds.y1 - bounds.y0)];

  function drawBackground(codes, labels) {
    const off = document.createElement("canvas");
    off.width = plane.width; off.height = plane.height;
    const ctx = off.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, off.width, off.height);
    if (codes) {
      ctx.globalAlpha = 0.5;
      for (let i = 0; i < codes.length / 2; i++) {
        const [x, y] = toCanvas([codes[2 * i], codes[2 * i + 1]]);
        ctx.fillStyle = TAB10[labels[i] % 10];
        ctx.fillRect(x - 1, y - 1, 2, 2);
      }
      ctx.globalAlpha = 1;
    }
    ctx.strokeStyle = "#999";
    const [ox, oy] = toCanvas([0, 0]);
    ctx.beginPath(); ctx.moveTo(ox, 0); ctx.lineTo(ox, off.height); ctx.moveTo(0, oy); ctx.lineTo(off.width, oy); ctx.stroke();
    return off;
  }

  function redraw(cursor) {
    const ctx = plane.getContext("2d");
    ctx.drawImage(background, 0, 0);
    ctx.lineWidth = 2;
    pins.forEach((z, i) => {
      const [x, y] = toCanvas(z);
      ctx.strokeStyle = "#000"; ctx.fillStyle = "#ffeb3b";
      ctx.beginPath(); ctx.arc(x, y, 6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      ctx.fillStyle = "#000"; ctx.font = "12px sans-serif"; ctx.fillText(String(i + 1), x + 8, y - 8);
    });
    if (cursor) {
      const [x, y] = toCanvas(cursor);
      ctx.strokeStyle = "#d00";
      ctx.beginPath(); ctx.moveTo(x - 10, y); ctx.lineTo(x + 10, y); ctx.moveTo(x, y - 10); ctx.lineTo(x, y + 10); ctx.stroke();
    }
  }

  function show(z) {
    const values = decoder(z);
    const pixels = toPixels(values);
    const [h, w] = shape;
    const image = new ImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = pixels[i];
      image.data[4 * i + 3] = 255;
    }
    const small = document.createElement("canvas");
    small.width = w; small.height = h;
    small.getContext("2d").putImageData(image, 0, 0);
    const ctx = decodedCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, decodedCanvas.width, decodedCanvas.height);
    coordsLabel.textContent = "z = (" + z[0].toFixed(3) + ", " + z[1].toFixed(3) + ")";
    decodedCanvas.dataset.z = JSON.stringify(z);
    window.latentExplorer.last = { z, values: Array.from(values), pixels: Array.from(pixels) };
  }

  function eventLatent(event) {
    const rect = plane.getBoundingClientRect();
    const px = ((event.clientX - rect.left) / rect.width) * plane.width;
    const py = ((event.clientY - rect.top) / rect.height) * plane.height;
    return toLatent(px, py).map((v) => +v.toFixed(4));
  }

  function renderPins() {
    pinList.replaceChildren(...pins.map((z) => {
      const li = document.createElement("li");
      li.textContent = "(" + z[0] + ", " + z[1] + ")";
      return li;
    }));
    pinnedInput.value = JSON.stringify(pins);
    serverButton.disabled = pins.length === 0;
  }

  try {
    const parsed = parseSafetensors(await fetchBuffer(root.dataset.decoder));
    decoder = makeDecoder(parsed);
    shape = JSON.parse(parsed.metadata.input_shape);
    let codes = null, labels = null;
    if (root.dataset.codes) {
      const c = parseSafetensors(await fetchBuffer(root.dataset.codes));
      codes = c.tensors.codes.data;
      labels = c.tensors.labels.data;
    }
    bounds = planeBounds(codes);
    background = drawBackground(codes, labels);
    legend.replaceChildren(...TAB10.map((colour, digit) => {
      const item = document.createElement("span");
      item.className = "legend-item legend-" + digit;
      item.textContent = "● " + digit;
      return item;
    }));
    redraw(null);
    status.textContent = "Decoder loaded (" + JSON.parse(parsed.metadata.layers).length + " layers); " +
      (codes ? (codes.length / 2).toLocaleString() + " training codes shown" : "no codes") + ".";
    status.dataset.ready = "true";
  } catch (error) {
    status.textContent = "Could not load the decoder: " + error.message;
    status.dataset.ready = "error";
    return;
  }

  plane.addEventListener("pointermove", (event) => {
    const z = eventLatent(event);
    show(z);
    redraw(z);
  });
  plane.addEventListener("click", (event) => {
    // Pin what is on screen: the hovered point (click coordinates are rounded to whole pixels).
    const shown = window.latentExplorer.last;
    const z = shown ? shown.z : eventLatent(event);
    pins.push(z);
    renderPins();
    redraw(z);
  });
  document.getElementById("clear-pins").addEventListener("click", () => {
    pins.length = 0;
    renderPins();
    redraw(null);
  });
  window.latentExplorer = Object.assign(window.latentExplorer || {}, { decode: (z) => Array.from(decoder(z)), pins, bounds });
});

window.latentExplorer = window.latentExplorer || {};
