// The "About this model" section from GET /api/info: the model, what it was trained on
// (every key of training_data, as a short table) and the test metrics (greedy vs beam).
"use strict";

window.IcapnetInfo = (() => {
  function formatValue(value) {
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(3);
    }
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function humanise(key) {
    const text = String(key).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
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

  function metricsTable(summary) {
    const tableEl = document.createElement("table");
    tableEl.className = "metrics";
    tableEl.id = "metrics-table";
    const caption = document.createElement("caption");
    const images = summary.num_images ? ` · ${formatValue(summary.num_images)} images` : "";
    caption.textContent = `${humanise(summary.split)} split${images}`;
    const head = document.createElement("thead");
    const headRow = document.createElement("tr");
    for (const label of ["Metric", ...summary.columns.map((c) => c.label)]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = label;
      headRow.appendChild(th);
    }
    head.appendChild(headRow);
    const body = document.createElement("tbody");
    for (const row of summary.rows) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = row.metric;
      tr.appendChild(th);
      for (const value of row.values) {
        const td = document.createElement("td");
        td.textContent = value === null ? "—" : value.toFixed(3);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    tableEl.append(caption, head, body);
    return tableEl;
  }

  function block(title, content) {
    const section = document.createElement("section");
    const h = document.createElement("h3");
    h.textContent = title;
    section.append(h, content);
    return section;
  }

  function render(container, info) {
    const grid = document.createElement("div");
    grid.className = "info-grid";
    const m = info.model;
    const b = info.backbone;
    grid.appendChild(block("Model", table([
      ["Name", info.name],
      ["Decoder", `${m.decoder.toUpperCase()} · ${m.units} units`],
      ["Attention", m.attention === "bahdanau" ? `Bahdanau (${m.attention_units} units)` : m.attention],
      ["Vocabulary", `${formatValue(info.vocab_size)} words`],
      ["Backbone", `${b.name} ${b.layer} (${b.grid}×${b.grid} regions)`],
    ])));
    const dataRows = Object.entries(info.training_data || {}).map(([k, v]) => [humanise(k), v]);
    if (info.training) {
      dataRows.push(["Epochs trained", info.training.epochs]);
      if ("val_loss" in info.training) dataRows.push(["Final val loss", info.training.val_loss]);
      else if ("loss" in info.training) dataRows.push(["Final loss", info.training.loss]);
    }
    const dataBlock = block("Trained on", table(dataRows));
    dataBlock.id = "training-data";
    grid.appendChild(dataBlock);
    let metrics;
    if (info.metrics_summary) {
      metrics = metricsTable(info.metrics_summary);
    } else {
      metrics = document.createElement("p");
      metrics.innerHTML = '<span class="badge">not evaluated yet</span>';
      const hint = document.createElement("small");
      hint.className = "muted";
      hint.textContent = " Run python -m icapnet.evaluate to score it.";
      metrics.appendChild(hint);
    }
    const metricsBlock = block("Test metrics", metrics);
    metricsBlock.id = "test-metrics";
    grid.appendChild(metricsBlock);
    container.replaceChildren(grid);
  }

  return { render };
})();
