// The result's downloads: the caption (.txt) and its data (.json) are made in the browser;
// the figures (.png, .gif) are drawn on the server by the same renderer as the command line's
// (POST /api/attention), then saved under the photo's name.
"use strict";

window.IcapnetDownloads = (() => {
  // page: {file(), result(), info(), setStatus(text, kind)}; buttons: {txt, json, png, gif}
  function attach(buttons, page) {
    function stem() {
      const file = page.file();
      const name = file ? file.name : "photo";
      return (name.replace(/\.[^.]+$/, "") || "photo").replace(/[^\w.-]+/g, "_");
    }

    function saveBlob(blob, name) {
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    }

    buttons.txt.addEventListener("click", () => {
      const r = page.result();
      if (!r) return;
      saveBlob(new Blob([r.caption + "\n"], { type: "text/plain" }), `${stem()}_caption.txt`);
    });

    buttons.json.addEventListener("click", () => {
      const r = page.result();
      if (!r) return;
      const file = page.file();
      const info = page.info();
      const data = {
        file: file ? file.name : null, model: info ? info.name : null,
        caption: r.caption, words: r.words, score: r.score, beam_size: r.beam_size,
        candidates: r.candidates || [], attention: r.attention, end_attention: r.end_attention,
      };
      saveBlob(new Blob([JSON.stringify(data, null, 1) + "\n"], { type: "application/json" }),
        `${stem()}_caption.json`);
    });

    async function figure(format, button) {
      const r = page.result();
      const file = page.file();
      if (!r || !file) return;
      const form = new FormData();
      form.append("image", file, file.name);
      form.append("beam_size", String(r.beam_size));
      form.append("format", format);
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      page.setStatus(`Drawing the ${format.toUpperCase()}…`);
      try {
        const response = await fetch("/api/attention", { method: "POST", body: form });
        if (!response.ok) {
          let detail = response.statusText;
          try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
          throw new Error(`${detail} (HTTP ${response.status})`);
        }
        saveBlob(await response.blob(), `${stem()}_attention.${format}`);
        page.setStatus(`Saved ${stem()}_attention.${format}.`, "ok");
      } catch (err) {
        page.setStatus(err instanceof TypeError ? "Could not reach the server. Is it still running?" : err.message, "error");
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    }
    buttons.png.addEventListener("click", () => figure("png", buttons.png));
    buttons.gif.addEventListener("click", () => figure("gif", buttons.gif));
  }

  return { attach };
})();
