// Draw one attention map (g x g) over a photo on a canvas, with the encoding of the figure
// download (icapnet/plots/attention.py): matplotlib's "plasma" colours on one scale for all
// words (0 .. vmax), opacity growing with the square root of the attention above the uniform
// share, so the photo shows unchanged where the model looked nowhere in particular.
"use strict";

window.IcapnetHeatmap = (() => {
  // matplotlib's "plasma", sampled at nine stops.
  const PLASMA = [
    [0.0, [13, 8, 135]], [0.125, [76, 2, 161]], [0.25, [126, 3, 168]], [0.375, [170, 35, 149]],
    [0.5, [204, 71, 120]], [0.625, [230, 108, 92]], [0.75, [248, 149, 64]],
    [0.875, [253, 197, 39]], [1.0, [240, 249, 33]],
  ];

  function colour(t) {
    for (let k = 1; k < PLASMA.length; k++) {
      if (t <= PLASMA[k][0]) {
        const [t0, c0] = PLASMA[k - 1];
        const [t1, c1] = PLASMA[k];
        const f = (t - t0) / (t1 - t0 || 1);
        return c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
      }
    }
    return PLASMA[PLASMA.length - 1][1];
  }

  // The g x g map as a tiny RGBA canvas; drawImage upsamples it smoothly.
  function tile(map, vmax) {
    const rows = map.length;
    const cols = map[0] ? map[0].length : 0;
    const canvas = document.createElement("canvas");
    canvas.width = cols;
    canvas.height = rows;
    if (!rows || !cols) return canvas;
    const floor = Math.min(1 / (rows * cols), 0.5 * vmax);
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = map[r][c];
        const [red, green, blue] = colour(Math.min(1, Math.max(0, v / vmax)));
        const focus = Math.min(1, Math.max(0, (v - floor) / (vmax - floor)));
        const k = 4 * (r * cols + c);
        pixels.data[k] = red;
        pixels.data[k + 1] = green;
        pixels.data[k + 2] = blue;
        pixels.data[k + 3] = Math.round(255 * Math.sqrt(focus));
      }
    }
    ctx.putImageData(pixels, 0, 0);
    return canvas;
  }

  // The largest weight of any map: the top of the shared scale.
  function peak(maps) {
    let top = 0;
    for (const map of maps) for (const row of map) for (const v of row) top = Math.max(top, v);
    return top > 0 ? top : 1;
  }

  function draw(ctx, map, width, height, alpha, vmax) {
    ctx.save();
    ctx.globalAlpha = alpha;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(tile(map, vmax), 0, 0, width, height);
    ctx.restore();
  }

  return { draw, peak };
})();
