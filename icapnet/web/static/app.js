// icapnet page: upload a photo (or pick an example), caption it via POST /api/caption, and
// draw each word's attention map over the photo on a <canvas> (heatmap.js: the figure
// download's encoding), with the word chips right under it. info.js fills "About this model".
// downloads.js makes the downloads. Plain JS, no build step. This file is the page's
// controller: one state object shared by the handlers below, kept together on purpose.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    dropzone: $("dropzone"), input: $("file-input"), dropTitle: $("drop-title"),
    dropHint: $("drop-hint"), stage: $("stage"), stageInner: $("stage-inner"),
    preview: $("preview"), overlay: $("overlay"), noPreview: $("no-preview"),
    stageCaption: $("stage-caption"), wordPanel: $("word-panel"), wordHint: $("word-hint"),
    words: $("words"), showHeat: $("show-heat"), opacity: $("heat-opacity"),
    examples: $("examples"), exampleList: $("example-list"), beam: $("beam-size"),
    beamValue: $("beam-value"), captionButton: $("caption-button"), clearButton: $("clear-button"),
    status: $("status"), resultEmpty: $("result-empty"), resultHint: $("result-hint"),
    result: $("result"), captionText: $("caption-text"), note: $("synthetic-note"),
    score: $("score"), beamUsed: $("beam-used"), elapsed: $("elapsed"),
    candidatesBlock: $("candidates-block"), candidates: $("candidates"), thumbs: $("thumbs"),
    info: $("info-body"), maxUpload: $("max-upload"),
    downloadTxt: $("download-txt"), downloadPng: $("download-png"),
    downloadGif: $("download-gif"), downloadJson: $("download-json"),
  };
  const state = {
    file: null, url: null, result: null, maps: [], labels: [], vmax: 1, selected: -1,
    pinned: -1, maxBytes: 10 * 1024 * 1024, info: null, synthetic: false, previewOk: false,
    beamTouched: false,
  };
  const SYNTHETIC_NOTE = "This model was trained on synthetic shapes; it describes any photo as coloured shapes.";
  const narrow = window.matchMedia("(max-width: 899px)");
  const touch = window.matchMedia("(hover: none), (pointer: coarse)");
  const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

  // ---------- words that fit the device ----------
  function applyWording() {
    const empty = els.dropzone.dataset.state !== "loaded";
    if (touch.matches) {
      els.dropTitle.innerHTML = empty ? 'Tap to choose a photo or take one'
        : 'Tap to choose <span class="link-like">another photo</span>';
      els.wordHint.textContent = "Tap a word to see where the model looked:";
      els.resultHint.textContent = "The caption appears here. Then tap its words under the photo to see where the model looked.";
    } else {
      els.dropTitle.innerHTML = empty ? 'Drop a photo here, or <span class="link-like">browse</span>'
        : 'Drop another photo, or <span class="link-like">browse</span>';
      els.wordHint.textContent = "Hover or click a word to see where the model looked:";
      els.resultHint.textContent = "The caption appears here. Then hover or click its words under the photo to see where the model looked.";
    }
  }
  if (touch.addEventListener) touch.addEventListener("change", applyWording);

  // ---------- status line ----------
  function setStatus(text, kind = "") {
    els.status.textContent = text;
    els.status.className = "status" + (kind ? " " + kind : "");
  }

  // ---------- choosing a photo ----------
  function rejection(file) {
    if (file.type && !file.type.startsWith("image/")) {
      return `${file.name}: not an image (${file.type}). Choose a JPEG, PNG, GIF, BMP, WebP or TIFF.`;
    }
    if (!file.type && !/\.(jpe?g|png|gif|bmp|webp|tiff?)$/i.test(file.name)) {
      return `${file.name}: not an image. Choose a JPEG, PNG, GIF, BMP, WebP or TIFF.`;
    }
    if (file.size > state.maxBytes) {
      return `${file.name}: ${formatBytes(file.size)} is over the ${formatBytes(state.maxBytes)} upload limit.`;
    }
    if (file.size === 0) return `${file.name}: the file is empty.`;
    return "";
  }

  function chooseFile(file) {
    if (!file) return false;
    const problem = rejection(file);
    if (problem) {
      // Nothing stays selected: Caption must never send an older photo than the one shown.
      resetSelection();
      setStatus(problem, "error");
      return false;
    }
    if (state.url) URL.revokeObjectURL(state.url);
    state.file = file;
    state.url = URL.createObjectURL(file);
    state.previewOk = false;
    clearResult();
    els.stageInner.hidden = false;
    els.noPreview.hidden = true;
    els.preview.src = state.url;
    els.preview.alt = `Selected photo: ${file.name}`;
    els.stage.hidden = false;
    els.dropzone.dataset.state = "loaded";
    applyWording();
    els.stageCaption.textContent = `${file.name} · ${formatBytes(file.size)}`;
    els.captionButton.disabled = false;
    els.clearButton.disabled = false;
    setStatus("Ready: press Caption.");
    return true;
  }

  function resetSelection() {
    if (state.url) URL.revokeObjectURL(state.url);
    Object.assign(state, { file: null, url: null, previewOk: false });
    clearResult();
    els.input.value = "";
    els.preview.removeAttribute("src");
    els.preview.removeAttribute("style");
    els.stage.hidden = true;
    els.dropzone.dataset.state = "empty";
    applyWording();
    els.captionButton.disabled = true;
    els.clearButton.disabled = true;
    setStatus("");
  }

  els.preview.addEventListener("error", () => {
    if (!state.file || !els.preview.getAttribute("src")) return;
    // A damaged file, or a format this browser cannot show (e.g. TIFF): no broken-image icon,
    // a plain sentence instead. The server may still caption it, so Caption stays enabled.
    state.previewOk = false;
    els.stageInner.hidden = true;
    els.noPreview.hidden = false;
    els.noPreview.textContent = `No preview of ${state.file.name}: this browser cannot show it ` +
      "(the file may be damaged, or in a format it cannot display). Caption will tell whether the server can read it.";
    els.stageCaption.textContent = `${state.file.name} · ${formatBytes(state.file.size)}`;
  });
  els.preview.addEventListener("load", () => {
    state.previewOk = true;
    fitPreview();
  });

  // Show the photo as large as the card allows (small photos are scaled up to 3x), keeping
  // its aspect ratio exactly so the g x g heatmap lines up with the pixels it describes.
  function fitPreview() {
    const img = els.preview;
    if (!img.naturalWidth || !img.naturalHeight || els.stage.hidden) return;
    const maxHeight = narrow.matches ? Math.min(420, Math.round(window.innerHeight * 0.5)) : 460;
    const available = Math.max(120, els.stage.clientWidth - 24);
    const scale = Math.min(available / img.naturalWidth, maxHeight / img.naturalHeight, 3);
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

  els.beam.addEventListener("input", () => { state.beamTouched = true; els.beamValue.textContent = els.beam.value; });

  els.clearButton.addEventListener("click", () => {
    resetSelection();
    els.input.focus();
  });

  // ---------- examples ----------
  async function loadExamples() {
    try {
      const response = await fetch("/api/examples");
      if (!response.ok) return;
      const { examples } = await response.json();
      if (!examples.length) return;
      for (const example of examples) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "example";
        button.setAttribute("aria-label", `Caption the example photo ${example.name}`);
        const img = document.createElement("img");
        img.src = example.url;
        img.alt = "";
        button.appendChild(img);
        button.addEventListener("click", () => useExample(example, button));
        els.exampleList.appendChild(button);
      }
      els.examples.hidden = false;
    } catch (_) { /* no examples: the strip stays hidden */ }
  }

  async function useExample(example, button) {
    button.disabled = true;
    try {
      const response = await fetch(example.url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blob = await response.blob();
      const file = new File([blob], example.name, { type: blob.type || "image/jpeg" });
      if (chooseFile(file)) await caption();
    } catch (err) {
      setStatus(`Could not load the example (${err.message}).`, "error");
    } finally {
      button.disabled = false;
    }
  }

  // ---------- captioning ----------
  async function caption() {
    if (!state.file) return;
    const file = state.file;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("beam_size", els.beam.value);
    els.captionButton.disabled = true;
    els.captionButton.setAttribute("aria-busy", "true");
    els.captionButton.textContent = "Captioning…";
    setStatus("Captioning…");
    try {
      const response = await fetch("/api/caption", { method: "POST", body: form });
      const body = await readJson(response);
      if (!response.ok) throw new Error(errorText(response, body));
      if (state.file !== file) return;  // another photo was chosen meanwhile
      showResult(body);
      setStatus(`Captioned in ${(body.elapsed_ms / 1000).toFixed(2)} s.`, "ok");
      revealResult();
    } catch (err) {
      clearResult();
      const message = err instanceof TypeError ? "Could not reach the server. Is it still running?" : err.message;
      setStatus(message, "error");
    } finally {
      els.captionButton.disabled = !state.file;
      els.captionButton.removeAttribute("aria-busy");
      els.captionButton.textContent = "Caption";
    }
  }
  els.captionButton.addEventListener("click", caption);

  async function readJson(response) {
    try { return await response.json(); } catch (_) { return null; }
  }

  function errorText(response, body) {
    const detail = body && body.detail
      ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
      : response.statusText;
    return `${detail} (HTTP ${response.status})`;
  }

  // On a phone the photo, its heatmap and the word chips sit above the fold only if we go
  // there: scroll the photo to the top once a caption arrives.
  function revealResult() {
    const behavior = reducedMotion.matches ? "auto" : "smooth";
    if (narrow.matches) {
      els.stage.scrollIntoView({ block: "start", behavior });
    } else {
      document.getElementById("result-card").scrollIntoView({ block: "nearest", behavior });
    }
  }

  function clearResult() {
    Object.assign(state, { result: null, maps: [], labels: [], selected: -1, pinned: -1 });
    els.result.hidden = true;
    els.resultEmpty.hidden = false;
    els.wordPanel.hidden = true;
    els.words.replaceChildren();
    els.thumbs.replaceChildren();
    els.candidates.tBodies[0].replaceChildren();
    clearOverlay();
  }

  function showResult(result) {
    state.result = result;
    state.labels = result.words.slice();
    state.maps = result.attention.slice();
    if (result.end_attention) {
      state.labels.push("<end>");
      state.maps.push(result.end_attention);
    }
    state.vmax = window.IcapnetHeatmap.peak(state.maps);

    els.resultEmpty.hidden = true;
    els.result.hidden = false;
    els.captionText.textContent = result.caption || "(empty caption)";
    els.note.hidden = !state.synthetic;
    els.note.textContent = state.synthetic ? SYNTHETIC_NOTE : "";
    els.score.textContent = Number(result.score).toFixed(3);
    els.beamUsed.textContent = String(result.beam_size);
    els.elapsed.textContent = `${(result.elapsed_ms / 1000).toFixed(2)} s`;
    showCandidates(result.candidates || []);

    els.words.replaceChildren();
    els.thumbs.replaceChildren();
    state.labels.forEach((word, i) => {
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
      thumbButton.addEventListener("click", () => { select(i, true); revealResult(); });
      item.appendChild(thumbButton);
      els.thumbs.appendChild(item);
      drawThumb(canvas, state.maps[i]);
    });
    els.wordPanel.hidden = state.labels.length === 0;
    select(state.labels.length ? 0 : -1, true);
  }

  function showCandidates(candidates) {
    const body = els.candidates.tBodies[0];
    body.replaceChildren();
    candidates.forEach((candidate, i) => {
      const tr = document.createElement("tr");
      if (i === 0) tr.className = "chosen";
      const rank = document.createElement("td");
      rank.textContent = String(i + 1);
      const text = document.createElement("td");
      text.textContent = candidate.caption || "(empty)";
      const score = document.createElement("td");
      score.className = "num";
      score.textContent = Number(candidate.score).toFixed(3);
      tr.append(rank, text, score);
      body.appendChild(tr);
    });
    els.candidatesBlock.hidden = candidates.length < 2;
  }

  function select(index, pin) {
    if (pin) state.pinned = index;
    state.selected = index;
    document.querySelectorAll("#words .word, #thumbs button").forEach((node) => {
      node.setAttribute("aria-pressed", String(Number(node.dataset.index) === state.pinned));
    });
    redraw();
  }

  // ---------- heatmaps (drawing: heatmap.js) ----------
  function drawHeat(ctx, map, width, height, alpha) {
    window.IcapnetHeatmap.draw(ctx, map, width, height, alpha, state.vmax);
  }

  function clearOverlay() {
    const ctx = els.overlay.getContext("2d");
    ctx.clearRect(0, 0, els.overlay.width, els.overlay.height);
  }

  function redraw() {
    const img = els.preview;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(img.clientWidth * ratio));
    const height = Math.max(1, Math.round(img.clientHeight * ratio));
    if (els.overlay.width !== width || els.overlay.height !== height) {
      els.overlay.width = width;
      els.overlay.height = height;
    }
    clearOverlay();
    if (!state.result || state.selected < 0) return;
    const map = state.maps[state.selected];
    const word = state.labels[state.selected];
    els.stageCaption.textContent = `Attention for “${word}” (${state.selected + 1} of ${state.labels.length})`;
    if (!map || !els.showHeat.checked) return;
    drawHeat(els.overlay.getContext("2d"), map, width, height, Number(els.opacity.value));
  }

  function drawThumb(canvas, map) {
    const img = els.preview;
    const natural = state.previewOk && img.naturalWidth && img.naturalHeight;
    const width = 220;
    const height = natural ? Math.max(40, Math.round((width * img.naturalHeight) / img.naturalWidth)) : width;
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    if (natural) {
      ctx.drawImage(img, 0, 0, width, height);
    } else {
      ctx.fillStyle = "#6b7280";
      ctx.fillRect(0, 0, width, height);
    }
    drawHeat(ctx, map, width, height, 0.8);
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

  // ---------- downloads (downloads.js) ----------
  window.IcapnetDownloads.attach(
    { txt: els.downloadTxt, json: els.downloadJson, png: els.downloadPng, gif: els.downloadGif },
    { file: () => state.file, result: () => state.result, info: () => state.info, setStatus });

  // ---------- model info ----------
  function formatBytes(bytes) {
    if (bytes >= 1024 * 1024) return `${+(bytes / (1024 * 1024)).toPrecision(3)} MB`;
    if (bytes >= 1024) return `${+(bytes / 1024).toPrecision(3)} KB`;
    return `${bytes} bytes`;
  }

  async function loadInfo() {
    try {
      const response = await fetch("/api/info");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const info = await response.json();
      state.info = info;
      const data = info.training_data || {};
      state.synthetic = data.dataset === "synthetic" || data.synthetic === true;
      if (state.result) {
        els.note.hidden = !state.synthetic;
        els.note.textContent = state.synthetic ? SYNTHETIC_NOTE : "";
      }
      state.maxBytes = info.limits.max_upload_bytes;
      els.maxUpload.textContent = info.limits.max_upload;
      els.beam.max = String(info.limits.max_beam_size);
      if (!state.beamTouched && info.limits.default_beam_size) els.beam.value = String(info.limits.default_beam_size);
      if (Number(els.beam.value) > info.limits.max_beam_size) els.beam.value = String(info.limits.max_beam_size);
      els.beamValue.textContent = els.beam.value;
      window.IcapnetInfo.render(els.info, info);
    } catch (err) {
      els.info.textContent = `Could not load model information (${err.message}).`;
    }
  }

  applyWording();
  loadInfo();
  loadExamples();
})();
