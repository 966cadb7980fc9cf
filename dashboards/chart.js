// A tiny canvas line/area chart: enough for tickets/s and latency-vs-budget, no library needed.

function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300;
  const h = canvas.clientHeight || Number(canvas.getAttribute("height")) || 100;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

// values: numbers (oldest first); opts: {color, fill, line (a horizontal reference, e.g. a budget), lineColor, label}
export function drawSeries(canvas, values, opts = {}) {
  const { ctx, w, h } = fit(canvas);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 34, r: 4, t: 6, b: 14 };
  const max = Math.max(1, opts.line || 0, ...values) * 1.1;
  const x = (i) => pad.l + (values.length <= 1 ? 0 : (i / (values.length - 1)) * (w - pad.l - pad.r));
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#8b96a5";
  ctx.strokeStyle = "#2a333e";
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const v = (max / 1.1) * f;
    ctx.beginPath();
    ctx.moveTo(pad.l, y(v));
    ctx.lineTo(w - pad.r, y(v));
    ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 2, y(v) + 3);
  }
  if (opts.label) ctx.fillText(opts.label, pad.l, h - 2);
  if (opts.line) {
    ctx.strokeStyle = opts.lineColor || "#f85149";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(pad.l, y(opts.line));
    ctx.lineTo(w - pad.r, y(opts.line));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  if (!values.length) return;
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.strokeStyle = opts.color || "#58a6ff";
  ctx.lineWidth = 1.5;
  ctx.stroke();
  if (opts.fill) {
    ctx.lineTo(x(values.length - 1), y(0));
    ctx.lineTo(x(0), y(0));
    ctx.closePath();
    ctx.fillStyle = opts.fill;
    ctx.fill();
  }
}
