// sharpkd web page: plain JavaScript, no frameworks, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SHOWABLE = ["image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif"];
let current = null; // {file, beforeUrl, afterUrl, downloadUrl}

// ---- tabs ----------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll('[role="tab"]')) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
  });
}

// ---- drag and drop -------------------------------------------------------------------------------
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) {
    $("file").files = e.dataTransfer.files;
    $("status").textContent = `Selected ${e.dataTransfer.files[0].name}.`;
  }
});

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

function b64ToBlob(b64, mime) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: mime });
}

async function post(url, form) {
  const resp = await fetch(url, { method: "POST", body: form });
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `the server answered ${resp.status}`;
    throw new Error(resp.status === 503 ? `${msg} (busy: retry in ${resp.headers.get("Retry-After") || "a few"} s)` : msg);
  }
  return body;
}

function sharpenForm(file, model) {
  const form = new FormData();
  form.append("image", file);
  form.append("model", model);
  form.append("format", $("as-png").checked ? "png" : "same");
  form.append("response", "json");
  form.append("scores", "1");
  if (!SHOWABLE.includes(file.type)) form.append("preview", "1");
  return form;
}

// a running clock in a status line while a request is out (the teacher can take tens of seconds)
function ticking(el, text) {
  const t0 = Date.now();
  setStatus(el, `${text}...`);
  const id = setInterval(() => setStatus(el, `${text}... ${Math.round((Date.now() - t0) / 1000)} s`), 1000);
  return () => clearInterval(id);
}

function edges(scores) {
  const a = scores.edge_width_before_px, b = scores.edge_width_after_px;
  return a == null || b == null ? "n/a (too few edges to measure)" : `${fmt(a, 2)} px \u2192 ${fmt(b, 2)} px`;
}

function fmt(v, digits) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(digits); }

function downloadName(file, ext) {
  const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
  return `${stem}_sharp${ext}`;
}

// ---- sharpen one model ---------------------------------------------------------------------------
$("sharpen-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus($("status"), "Choose a photo first.", true); return; }
  const model = document.querySelector('input[name="model"]:checked').value;
  $("go").disabled = true;
  const stop = ticking($("status"), `Sharpening with ${model}`);
  try {
    const r = await post("/api/sharpen", sharpenForm(file, model));
    stop();
    showResult(file, r);
    setStatus($("status"), `Done: ${r.width}x${r.height} in ${fmt(r.time_ms / 1000, 2)} s.`);
  } catch (err) {
    stop();
    $("result").hidden = true; // never leave the previous photo's result under a new error
    setStatus($("status"), `Could not sharpen: ${err.message}`, true);
  } finally {
    $("go").disabled = false;
  }
});

function showResult(file, r) {
  if (current) for (const u of [current.beforeUrl, current.afterUrl]) URL.revokeObjectURL(u);
  const before = r.preview ? URL.createObjectURL(b64ToBlob(r.preview, "image/png")) : URL.createObjectURL(file);
  const blob = b64ToBlob(r.image, r.mime);
  const after = URL.createObjectURL(blob);
  current = { file, beforeUrl: before, afterUrl: after };
  for (const id of ["img-before", "side-before"]) $(id).src = before;
  for (const id of ["img-after", "side-after"]) $(id).src = after;
  $("zoom-before").style.backgroundImage = `url("${before}")`;
  $("zoom-after").style.backgroundImage = `url("${after}")`;
  $("score-time").textContent = `${fmt(r.time_ms, 0)} ms`;
  $("score-model").textContent = r.model;
  $("score-edges").textContent = edges(r.scores);
  const link = $("download");
  link.href = after;
  link.download = downloadName(file, r.extension);
  $("download-info").textContent = `${r.width}x${r.height} ${r.format}, ${(blob.size / 1024).toFixed(0)} KB`;
  $("result").hidden = false;
  setZoom(0.5, 0.5);
}

// ---- slider, views and zoom ------------------------------------------------------------------------
$("slider").addEventListener("input", (e) => {
  $("img-after").style.clipPath = `inset(0 0 0 ${e.target.value}%)`;
});
function setView(side) {
  $("side-view").hidden = !side;
  $("slider-view").hidden = side;
  $("view-side").setAttribute("aria-pressed", String(side));
  $("view-slider").setAttribute("aria-pressed", String(!side));
}
$("view-slider").addEventListener("click", () => setView(false));
$("view-side").addEventListener("click", () => setView(true));

function setZoom(fx, fy) {
  const img = $("img-after");
  const w = img.naturalWidth, h = img.naturalHeight;
  if (!w || !h) { img.addEventListener("load", () => setZoom(fx, fy), { once: true }); return; }
  for (const id of ["zoom-before", "zoom-after"]) {
    const pane = $(id);
    const pw = pane.clientWidth, ph = pane.clientHeight;
    const x = Math.max(0, Math.min(w - pw, fx * w - pw / 2));
    const y = Math.max(0, Math.min(h - ph, fy * h - ph / 2));
    pane.style.backgroundPosition = `${-x}px ${-y}px`;
    pane.style.backgroundSize = `${w}px ${h}px`;
  }
}
for (const id of ["compare-box", "side-before", "side-after"]) {
  $(id).addEventListener("click", (e) => {
    const r = e.currentTarget.getBoundingClientRect();
    setZoom((e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height);
  });
}

// ---- compare all models ----------------------------------------------------------------------------
$("compare").addEventListener("click", async () => {
  const file = $("file").files[0];
  if (!file) { setStatus($("status"), "Choose a photo first.", true); return; }
  const models = [...document.querySelectorAll('input[name="model"]')].map((i) => i.value);
  const grid = $("all-grid");
  grid.textContent = "";
  $("all").hidden = false;
  $("compare").disabled = true;
  const orig = document.createElement("figure");
  orig.innerHTML = "<img alt=\"Original upload\"><figcaption>original</figcaption>";
  orig.querySelector("img").src = URL.createObjectURL(file);
  grid.appendChild(orig);
  try {
    for (const m of models) {
      const stop = ticking($("status"), `Comparing: ${m}`);
      let r;
      try { r = await post("/api/sharpen", sharpenForm(file, m)); } finally { stop(); }
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = `Result of ${m}`;
      img.src = URL.createObjectURL(b64ToBlob(r.image, r.mime));
      const cap = document.createElement("figcaption");
      cap.textContent = `${m}: ${fmt(r.time_ms, 0)} ms, edge width ${edges(r.scores)}`;
      fig.append(img, cap);
      grid.appendChild(fig);
    }
    setStatus($("status"), "All models done.");
  } catch (err) {
    setStatus($("status"), `Could not compare: ${err.message}`, true);
  } finally {
    $("compare").disabled = false;
  }
});

// ---- demo mode ---------------------------------------------------------------------------------------
$("demo-blur").addEventListener("change", (e) => {
  const opt = e.target.selectedOptions[0];
  const s = $("demo-strength");
  s.min = opt.dataset.min;
  s.max = opt.dataset.max;
  s.value = e.target.value === "gaussian" ? 2 : e.target.value === "defocus" ? 3 : 12;
});
$("demo-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("demo-file").files[0];
  if (!file) { setStatus($("demo-status"), "Choose a sharp photo first.", true); return; }
  const form = new FormData($("demo-form"));
  $("demo-go").disabled = true;
  const stop = ticking($("demo-status"), "Blurring and sharpening");
  try {
    let r;
    try { r = await post("/api/demo", form); } finally { stop(); }
    for (const k of ["blurred", "sharpened", "original"]) $(`demo-${k}`).src = `data:image/png;base64,${r[k]}`;
    for (const k of ["blurred", "sharpened"]) {
      $(`demo-psnr-${k}`).textContent = fmt(r.metrics[k].psnr, 2);
      $(`demo-ssim-${k}`).textContent = fmt(r.metrics[k].ssim, 4);
    }
    $("demo-result").hidden = false;
    const gain = r.metrics.sharpened.psnr - r.metrics.blurred.psnr;
    setStatus($("demo-status"), `Done in ${fmt(r.time_ms / 1000, 2)} s: ${gain >= 0 ? "+" : ""}${fmt(gain, 2)} dB.`);
  } catch (err) {
    $("demo-result").hidden = true;
    setStatus($("demo-status"), `Could not run the demo: ${err.message}`, true);
  } finally {
    $("demo-go").disabled = false;
  }
});
