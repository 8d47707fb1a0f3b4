// Tiny inline-SVG charts (bars, histogram, lines): enough for the station page, no library, no CDN.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 240, M = { l: 44, r: 44, t: 12, b: 34 };
  const COLORS = { ok: "#2ea043", defect: "#e5534b", retake: "#d29922", line: "#4493f8", mean: "#4493f8", yield: "#4493f8", p95: "#c297ff", threshold: "#e6edf3" };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, s, anchor) {
    const t = el("text", { x, y, "text-anchor": anchor || "middle" }, parent);
    t.textContent = s;
    return t;
  }

  function frame(host, yMax, yFmt, rightAxis) {
    host.replaceChildren();
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" }, host);
    for (let i = 0; i <= 4; i++) {
      const y = M.t + (H - M.t - M.b) * (1 - i / 4);
      el("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, class: "axis" }, svg);
      text(svg, M.l - 6, y + 4, yFmt(yMax * i / 4), "end");
      if (rightAxis) text(svg, W - M.r + 6, y + 4, rightAxis(i / 4), "start");
    }
    return svg;
  }

  function empty(host, message) {
    host.replaceChildren();
    const svg = el("svg", { viewBox: `0 0 ${W} 80` }, host);
    el("text", { x: W / 2, y: 45, "text-anchor": "middle", class: "empty" }, svg).textContent = message;
  }

  const sx = (i, n) => M.l + (W - M.l - M.r) * (i + 0.5) / n;
  const sy = (v, max) => M.t + (H - M.t - M.b) * (1 - v / max);
  const niceMax = (v) => { if (v <= 0) return 1; const p = 10 ** Math.floor(Math.log10(v)); return Math.ceil(v / p) * p; };
  const every = (n) => Math.max(1, Math.ceil(n / 8));

  // Stacked bars per bucket, with an optional 0..1 line on the right axis (yield).
  function stackedBars(host, { labels, series, line }) {
    if (!labels.length) return empty(host, "no parts in this window");
    const totals = labels.map((_, i) => series.reduce((s, ser) => s + ser.values[i], 0));
    const max = niceMax(Math.max(...totals));
    const svg = frame(host, max, (v) => Math.round(v), line ? (f) => `${Math.round(f * 100)}%` : null);
    const bw = Math.min(60, Math.max(2, (W - M.l - M.r) / labels.length * 0.7));
    labels.forEach((lab, i) => {
      let base = 0;
      for (const ser of series) {
        const v = ser.values[i];
        if (v > 0) {
          const r = el("rect", { x: sx(i, labels.length) - bw / 2, y: sy(base + v, max), width: bw,
            height: sy(base, max) - sy(base + v, max), fill: COLORS[ser.name] }, svg);
          el("title", {}, r).textContent = `${lab}: ${v} ${ser.name}`;
        }
        base += v;
      }
      if (i % every(labels.length) === 0) text(svg, sx(i, labels.length), H - M.b + 16, lab);
    });
    if (line) polyline(svg, line.values.map((v) => (v == null ? null : v * max)), max, COLORS.line, labels.length);
    legend(svg, series.map((s) => s.name).concat(line ? ["yield"] : []));
  }

  function polyline(svg, values, max, color, n, dash) {
    let d = "";
    values.forEach((v, i) => {
      if (v == null) return;
      d += `${d ? "L" : "M"}${sx(i, n).toFixed(1)},${sy(v, max).toFixed(1)}`;
      el("circle", { cx: sx(i, n), cy: sy(v, max), r: 2.5, fill: color }, svg);
    });
    if (d) el("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash || "" }, svg);
  }

  function legend(svg, names) {
    names.forEach((name, i) => {
      const x = M.l + 8 + i * 90;
      el("rect", { x, y: M.t, width: 10, height: 10, fill: COLORS[name] || COLORS.line }, svg);
      text(svg, x + 14, M.t + 9, name, "start");
    });
  }

  // Histogram per verdict over fixed edges, with the threshold as a dashed vertical line.
  function histogram(host, { edges, counts, threshold }) {
    const names = Object.keys(counts);
    const n = edges.length - 1;
    const totals = Array.from({ length: n }, (_, i) => names.reduce((s, k) => s + counts[k][i], 0));
    if (!totals.some((v) => v > 0)) return empty(host, "no scores in this window");
    const max = niceMax(Math.max(...totals));
    const svg = frame(host, max, (v) => Math.round(v));
    const bw = (W - M.l - M.r) / n;
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const k of names) {
        const v = counts[k][i];
        if (v > 0) el("rect", { x: M.l + i * bw + 1, y: sy(base + v, max), width: bw - 2,
          height: sy(base, max) - sy(base + v, max), fill: COLORS[k] }, svg);
        base += v;
      }
      if (i % 2 === 0) text(svg, M.l + i * bw, H - M.b + 16, edges[i].toFixed(1));
    }
    text(svg, W - M.r, H - M.b + 16, `${edges[n].toFixed(1)}+`);
    if (threshold != null) {
      const lo = edges[0], hi = edges[n];
      const x = M.l + (W - M.l - M.r) * Math.min(1, Math.max(0, (threshold - lo) / (hi - lo)));
      el("line", { x1: x, x2: x, y1: M.t, y2: H - M.b, stroke: COLORS.threshold, "stroke-width": 2,
        "stroke-dasharray": "6 4", class: "threshold-line" }, svg);
      text(svg, x + 4, M.t + 24, `threshold ${threshold.toFixed(2)}`, "start");
    }
    legend(svg, names);
  }

  // Lines over buckets (mean, p95) with the threshold as a dashed horizontal line.
  function lines(host, { labels, series, threshold }) {
    if (!labels.length) return empty(host, "no scores in this window");
    const all = series.flatMap((s) => s.values).concat(threshold != null ? [threshold] : []);
    const max = niceMax(Math.max(...all) * 1.1);
    const svg = frame(host, max, (v) => v.toFixed(2));
    labels.forEach((lab, i) => { if (i % every(labels.length) === 0) text(svg, sx(i, labels.length), H - M.b + 16, lab); });
    if (threshold != null) {
      el("line", { x1: M.l, x2: W - M.r, y1: sy(threshold, max), y2: sy(threshold, max), stroke: COLORS.threshold,
        "stroke-width": 1.5, "stroke-dasharray": "6 4", class: "threshold-line" }, svg);
      text(svg, W - M.r - 4, sy(threshold, max) - 5, "threshold", "end");
    }
    for (const s of series) polyline(svg, s.values, max, COLORS[s.name] || COLORS.line, labels.length);
    legend(svg, series.map((s) => s.name));
  }

  window.KenpinCharts = { stackedBars, histogram, lines };
})();
