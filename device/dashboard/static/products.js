// Products on the station page: the active one (header and Station tab), the switch (engineer's
// token, through app.js's action()), each product's parts since start, and per-product statistics.
// app.js calls the hooks below; every value shown goes through textContent.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const fmt = (v, d = 3) => (v == null ? "–" : Number(v).toFixed(d));
  let shown = null; // number of the product in the header

  function node(tag, text) {
    const n = document.createElement(tag);
    if (text != null) n.textContent = text;
    return n;
  }

  function row(cells) {
    const tr = node("tr");
    for (const c of cells) tr.appendChild(node("td", c == null ? "–" : String(c)));
    return tr;
  }

  function showActive(p) {
    if (!p) return;
    shown = p.number;
    $("#product-name").textContent = `product ${p.number} · ${p.name}`;
    $("#product-now").textContent = `${p.number} · ${p.name}`;
  }

  // Station tab: the active product, every product with its settings and parts since start, the switch.
  function showStation(st) {
    showActive(st.product);
    const rows = $("#product-rows"), pick = $("#product-pick");
    rows.replaceChildren();
    const chosen = pick.value;
    pick.replaceChildren();
    for (const p of st.products || []) {
      const c = p.counters || {};
      const tr = row([p.number, p.name, p.bundle_id, fmt(p.threshold, 3), `${fmt(p.pulse_ms, 0)} / ${fmt(p.delay_ms, 0)} ms`,
        `${c.ok || 0} / ${c.defect || 0} / ${c.retake || 0}`]);
      if (st.product && p.number === st.product.number) tr.className = "active";
      rows.appendChild(tr);
      const opt = node("option", `${p.number} · ${p.name}`);
      opt.value = p.number;
      pick.appendChild(opt);
    }
    pick.value = chosen || (st.product ? st.product.number : "");
  }

  // Statistics tab: counts and yield of each product in the window.
  function showStats(s) {
    const rows = $("#stats-product-rows");
    rows.replaceChildren();
    for (const p of s.products || []) {
      rows.appendChild(row([p.product, p.name, p.total, p.ok, p.defect, p.retake,
        p.yield == null ? "–" : `${(p.yield * 100).toFixed(1)} %`]));
    }
  }

  // The header's product, from the station's status (once at start, and after a switch shows).
  function refresh(api) {
    api("/api/station").then((st) => showActive(st.product)).catch(() => {});
  }

  // A verdict of another product than the header shows: the product was switched; fetch its name once.
  function onVerdict(r, api) {
    if (shown != null && r.product !== shown) {
      shown = r.product;
      refresh(api);
    }
  }

  function wire(action) {
    $("#product-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const number = Number($("#product-pick").value);
      action("/api/product", { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ number }) },
        (r) => { showActive(r.product); return `product ${r.product.number} (${r.product.name}) active from the next part`; });
    });
  }

  window.kenpinProducts = { showStation, showStats, onVerdict, refresh, wire };
})();
