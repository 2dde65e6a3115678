// The run page's log: log.txt, fetched from its artifact URL (the API checks it against its sha256) the first
// time the section is opened, and shown as text, never as HTML. A long log shows its end, where an error would be.
"use strict";
(function () {
  const LIMIT = 256 * 1024;
  const box = document.getElementById("job-log");
  if (!box) return;
  const text = box.querySelector("[data-role=log-text]");
  let loading = false;

  async function load() {
    loading = true;
    const size = Number(box.dataset.size);
    // "bytes=N-" rather than a suffix range: a CORS-safelisted header, should the URL redirect to the object store.
    const headers = size > LIMIT ? { Range: `bytes=${size - LIMIT}-` } : {};
    try {
      const response = await fetch(box.dataset.url, { headers });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      let body = await response.text();
      if (response.status === 206) {  // the first line may start mid-way: it is dropped
        body = `… ${(size - LIMIT).toLocaleString()} bytes before these lines are left out: download log.txt for all …\n`
          + body.slice(body.indexOf("\n") + 1);
      }
      text.textContent = body;
      box.dataset.loaded = "true";
    } catch (error) {
      text.textContent = `The log could not be loaded (${error.message}); the log.txt link downloads it.`;
      loading = false;
    }
  }

  box.addEventListener("toggle", () => { if (box.open && !loading) load(); });
  if (box.open) load();
})();
