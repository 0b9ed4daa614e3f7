// icapnet page: upload a photo, caption it via POST /api/caption, and draw each word's
// attention map (g x g, smoothly upsampled) over the photo on a <canvas>. Plain JS, no build.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    dropzone: $("dropzone"), input: $("file-input"), stage: $("stage"), preview: $("preview"),
    overlay: $("overlay"), stageCaption: $("stage-caption"), beam: $("beam-size"),
    beamValue: $("beam-value"), captionButton: $("caption-button"), clearButton: $("clear-button"),
    status: $("status"), resultEmpty: $("result-empty"), result: $("result"),
    captionText: $("caption-text"), score: $("score"), beamUsed: $("beam-used"),
    elapsed: $("elapsed"), words: $("words"), thumbs: $("thumbs"), showHeat: $("show-heat"),
    opacity: $("heat-opacity"), info: $("info-body"), maxUpload: $("max-upload"),
  };
  const state = { file: null, url: null, result: null, selected: -1, pinned: -1, maxBytes: 10 * 1024 * 1024 };

  // ---------- status line ----------
  function setStatus(text, kind = "") {
    els.status.textContent = text;
    els.status.className = "status" + (kind ? " " + kind : "");
  }

  // ---------- choosing a photo ----------
  function chooseFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(`${file.name}: not an image (${file.type}). Choose a JPEG, PNG, GIF, BMP, WebP or TIFF.`, "error");
      return;
    }
    if (file.size > state.maxBytes) {
      setStatus(`${file.name}: ${formatBytes(file.size)} is over the ${formatBytes(state.maxBytes)} upload limit.`, "error");
      return;
    }
    if (file.size === 0) {
      setStatus(`${file.name}: the file is empty.`, "error");
      return;
    }
    if (state.url) URL.revokeObjectURL(state.url);
    state.file = file;
    state.url = URL.createObjectURL(file);
    clearResult();
    els.preview.src = state.url;
    els.preview.alt = `Selected photo: ${file.name}`;
    els.stage.hidden = false;
    els.dropzone.dataset.state = "loaded";
    document.querySelector(".drop-title").innerHTML = 'Drop another photo, or <span class="link-like">browse</span>';
    els.stageCaption.textContent = `${file.name} · ${formatBytes(file.size)}`;
    els.captionButton.disabled = false;
    els.clearButton.disabled = false;
    setStatus("Ready: press Caption.");
  }

  els.preview.addEventListener("error", () => {
    if (!state.file) return;
    // Browsers cannot show every format (e.g. TIFF); the server may still caption it.
    els.stageCaption.textContent = `${state.file.name} · preview not available in this browser`;
  });
  els.preview.addEventListener("load", () => fitPreview());

  // Show the photo as large as the card allows (small photos are scaled up to 3x), keeping
  // its aspect ratio exactly so the g x g heatmap lines up with the pixels it describes.
  const MAX_PREVIEW_HEIGHT = 460;
  function fitPreview() {
    const img = els.preview;
    if (!img.naturalWidth || !img.naturalHeight || els.stage.hidden) return;
    const available = Math.max(120, els.stage.clientWidth - 24);
    const scale = Math.min(available / img.naturalWidth, MAX_PREVIEW_HEIGHT / img.naturalHeight, 3);
    img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
    img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
    redraw();
  }

  els.input.addEventListener("change", () => chooseFile(els.input.files[0]));

  ["dragenter", "dragover"].forEach((type) => els.dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    els.dropzone.classList.add("dragging");
  }));
  ["dragleave", "dragend"].forEach((type) => els.dropzone.addEventListener(type, (event) => {
    if (event.target === els.dropzone || !els.dropzone.contains(event.relatedTarget)) {
      els.dropzone.classList.remove("dragging");
    }
  }));
  els.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    els.dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  // A photo dropped outside the zone should not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  els.beam.addEventListener("input", () => { els.beamValue.textContent = els.beam.value; });

  els.clearButton.addEventListener("click", () => {
    if (state.url) URL.revokeObjectURL(state.url);
    Object.assign(state, { file: null, url: null });
    clearResult();
    els.input.value = "";
    els.preview.removeAttribute("src");
    els.preview.removeAttribute("style");
    els.stage.hidden = true;
    els.dropzone.dataset.state = "empty";
    document.querySelector(".drop-title").innerHTML = 'Drop a photo here, or <span class="link-like">browse</span>';
    els.captionButton.disabled = true;
    els.clearButton.disabled = true;
    setStatus("");
    els.input.focus();
  });

  // ---------- captioning ----------
  els.captionButton.addEventListener("click", async () => {
    if (!state.file) return;
    const form = new FormData();
    form.append("image", state.file, state.file.name);
    form.append("beam_size", els.beam.value);
    els.captionButton.disabled = true;
    els.captionButton.setAttribute("aria-busy", "true");
    els.captionButton.textContent = "Captioning…";
    setStatus("Captioning…");
    try {
      const response = await fetch("/api/caption", { method: "POST", body: form });
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      if (!response.ok) {
        const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
        throw new Error(`${detail} (HTTP ${response.status})`);
      }
      showResult(body);
      setStatus(`Captioned in ${(body.elapsed_ms / 1000).toFixed(2)} s.`, "ok");
    } catch (err) {
      clearResult();
      const message = err instanceof TypeError ? "Could not reach the server. Is it still running?" : err.message;
      setStatus(message, "error");
    } finally {
      els.captionButton.disabled = !state.file;
      els.captionButton.removeAttribute("aria-busy");
      els.captionButton.textContent = "Caption";
    }
  });

  function clearResult() {
    state.result = null;
    state.selected = -1;
    state.pinned = -1;
    els.result.hidden = true;
    els.resultEmpty.hidden = false;
    els.words.replaceChildren();
    els.thumbs.replaceChildren();
    clearOverlay();
  }

  function showResult(result) {
    state.result = result;
    els.resultEmpty.hidden = true;
    els.result.hidden = false;
    els.captionText.textContent = result.caption || "(empty caption)";
    els.score.textContent = Number(result.score).toFixed(3);
    els.beamUsed.textContent = String(result.beam_size);
    els.elapsed.textContent = `${(result.elapsed_ms / 1000).toFixed(2)} s`;

    const labels = result.words.slice();
    if (result.attention.length > labels.length) labels.push("<end>");
    els.words.replaceChildren();
    els.thumbs.replaceChildren();
    labels.forEach((word, i) => {
      if (i >= result.attention.length) return;
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "word" + (i >= result.words.length ? " end" : "");
      chip.textContent = word;
      chip.dataset.index = String(i);
      chip.setAttribute("aria-pressed", "false");
      chip.setAttribute("aria-label", `Show where the model looked for “${word}”`);
      chip.addEventListener("mouseenter", () => select(i, false));
      chip.addEventListener("focus", () => select(i, false));
      chip.addEventListener("mouseleave", () => select(state.pinned, false));
      chip.addEventListener("blur", () => select(state.pinned, false));
      chip.addEventListener("click", () => select(i, true));
      els.words.appendChild(chip);

      const item = document.createElement("li");
      const thumbButton = document.createElement("button");
      thumbButton.type = "button";
      thumbButton.dataset.index = String(i);
      thumbButton.setAttribute("aria-pressed", "false");
      const canvas = document.createElement("canvas");
      canvas.className = "thumb-canvas";
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `Attention map for “${word}”`);
      const label = document.createElement("span");
      label.textContent = word;
      thumbButton.append(canvas, label);
      thumbButton.addEventListener("click", () => select(i, true));
      item.appendChild(thumbButton);
      els.thumbs.appendChild(item);
      drawThumb(canvas, result.attention[i]);
    });
    select(0, true);
  }

  function select(index, pin) {
    if (pin) state.pinned = index;
    state.selected = index;
    document.querySelectorAll("#words .word, #thumbs button").forEach((node) => {
      node.setAttribute("aria-pressed", String(Number(node.dataset.index) === state.pinned));
    });
    redraw();
  }

  // ---------- heatmaps ----------
  // A perceptual-ish "jet" ramp: transparent blue for ignored regions up to opaque red.
  const RAMP = [
    [0.0, [0, 0, 130]], [0.15, [32, 80, 255]], [0.35, [32, 208, 255]], [0.5, [64, 255, 128]],
    [0.65, [255, 224, 48]], [0.82, [255, 80, 32]], [1.0, [176, 0, 0]],
  ];
  function colour(t) {
    for (let k = 1; k < RAMP.length; k++) {
      if (t <= RAMP[k][0]) {
        const [t0, c0] = RAMP[k - 1];
        const [t1, c1] = RAMP[k];
        const f = (t - t0) / (t1 - t0 || 1);
        return c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
      }
    }
    return RAMP[RAMP.length - 1][1];
  }

  // The g x g map as a tiny canvas, normalised to its own peak; drawImage upsamples it smoothly.
  function heatTile(map) {
    const rows = map.length;
    const cols = map[0] ? map[0].length : 0;
    const tile = document.createElement("canvas");
    tile.width = cols;
    tile.height = rows;
    if (!rows || !cols) return tile;
    let peak = 0;
    for (const row of map) for (const v of row) peak = Math.max(peak, v);
    const ctx = tile.getContext("2d");
    const pixels = ctx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const t = peak > 0 ? Math.max(0, map[r][c]) / peak : 0;
        const [red, green, blue] = colour(t);
        const o = 4 * (r * cols + c);
        pixels.data[o] = red;
        pixels.data[o + 1] = green;
        pixels.data[o + 2] = blue;
        pixels.data[o + 3] = Math.round(255 * (0.15 + 0.85 * Math.pow(t, 0.8)));
      }
    }
    ctx.putImageData(pixels, 0, 0);
    return tile;
  }

  function drawHeat(ctx, map, width, height, alpha) {
    ctx.save();
    ctx.globalAlpha = alpha;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(heatTile(map), 0, 0, width, height);
    ctx.restore();
  }

  function clearOverlay() {
    const ctx = els.overlay.getContext("2d");
    ctx.clearRect(0, 0, els.overlay.width, els.overlay.height);
  }

  function redraw() {
    const img = els.preview;
    const result = state.result;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(img.clientWidth * ratio));
    const height = Math.max(1, Math.round(img.clientHeight * ratio));
    if (els.overlay.width !== width || els.overlay.height !== height) {
      els.overlay.width = width;
      els.overlay.height = height;
    }
    clearOverlay();
    if (!result || state.selected < 0 || !els.showHeat.checked) return;
    const map = result.attention[state.selected];
    if (!map) return;
    drawHeat(els.overlay.getContext("2d"), map, width, height, Number(els.opacity.value));
    const word = state.selected < result.words.length ? result.words[state.selected] : "<end>";
    els.stageCaption.textContent = `Attention for “${word}” (word ${state.selected + 1} of ${result.attention.length})`;
  }

  function drawThumb(canvas, map) {
    const img = els.preview;
    const natural = img.naturalWidth && img.naturalHeight;
    const width = 220;
    const height = natural ? Math.max(40, Math.round((width * img.naturalHeight) / img.naturalWidth)) : width;
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    if (natural) {
      ctx.drawImage(img, 0, 0, width, height);
      ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
      ctx.fillRect(0, 0, width, height);
    }
    drawHeat(ctx, map, width, height, 0.7);
  }

  els.showHeat.addEventListener("change", redraw);
  els.opacity.addEventListener("input", redraw);
  if (window.ResizeObserver) {
    new ResizeObserver(() => redraw()).observe(els.preview);
    let lastWidth = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width !== lastWidth) { lastWidth = width; requestAnimationFrame(fitPreview); }
    }).observe(els.dropzone);
  } else {
    window.addEventListener("resize", fitPreview);
  }

  // ---------- model info ----------
  function formatBytes(bytes) {
    if (bytes >= 1024 * 1024) return `${+(bytes / (1024 * 1024)).toPrecision(3)} MB`;
    if (bytes >= 1024) return `${+(bytes / 1024).toPrecision(3)} KB`;
    return `${bytes} bytes`;
  }

  function formatValue(value) {
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(4);
    }
    if (value === null || value === undefined || value === "") return "—";
    return String(value);
  }

  function table(rows) {
    const tableEl = document.createElement("table");
    tableEl.className = "kv";
    const body = document.createElement("tbody");
    for (const [key, value] of rows) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = key;
      const td = document.createElement("td");
      td.textContent = formatValue(value);
      tr.append(th, td);
      body.appendChild(tr);
    }
    tableEl.appendChild(body);
    return tableEl;
  }

  function block(title, content) {
    const section = document.createElement("section");
    const h = document.createElement("h3");
    h.textContent = title;
    section.append(h, content);
    return section;
  }

  function renderInfo(info) {
    const grid = document.createElement("div");
    grid.className = "info-grid";
    const m = info.model;
    const b = info.backbone;
    grid.appendChild(block("Model", table([
      ["Name", info.name],
      ["Decoder", `${m.decoder.toUpperCase()} · ${m.units} units`],
      ["Attention", m.attention === "bahdanau" ? `Bahdanau (${m.attention_units} units)` : m.attention],
      ["Embedding", m.embedding_dim],
      ["Vocabulary", `${formatValue(info.vocab_size)} words`],
      ["Backbone", `${b.name} ${b.layer} (${b.grid}×${b.grid} regions)`],
      ["Backbone weights", b.weights],
    ])));
    const d = info.data;
    const dataRows = [["Dataset", d.dataset], ["Data folder", d.data_dir], ["Min word count", d.min_count]];
    if (info.training) {
      dataRows.push(["Epochs trained", info.training.epochs]);
      if ("val_loss" in info.training) dataRows.push(["Final val loss", info.training.val_loss]);
      else if ("loss" in info.training) dataRows.push(["Final loss", info.training.loss]);
    }
    grid.appendChild(block("Training data", table(dataRows)));
    let metrics;
    if (info.metrics_table && info.metrics_table.length) {
      metrics = table(info.metrics_table);
    } else {
      metrics = document.createElement("p");
      metrics.innerHTML = '<span class="badge">not evaluated yet</span>';
      const hint = document.createElement("small");
      hint.className = "muted";
      hint.textContent = " Run python -m icapnet.evaluate to score it.";
      metrics.appendChild(hint);
    }
    grid.appendChild(block("Test metrics", metrics));
    els.info.replaceChildren(grid);
  }

  async function loadInfo() {
    try {
      const response = await fetch("/api/info");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const info = await response.json();
      state.maxBytes = info.limits.max_upload_bytes;
      els.maxUpload.textContent = info.limits.max_upload;
      els.beam.max = String(info.limits.max_beam_size);
      if (Number(els.beam.value) > info.limits.max_beam_size) els.beam.value = String(info.limits.max_beam_size);
      els.beamValue.textContent = els.beam.value;
      renderInfo(info);
    } catch (err) {
      els.info.textContent = `Could not load model information (${err.message}).`;
    }
  }

  loadInfo();
})();
