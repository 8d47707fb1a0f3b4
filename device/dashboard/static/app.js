// The station page: live view + SSE feed, history, statistics, station and the engineer's actions.
// Plain DOM, no framework, no build step; every value shown goes through textContent.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const state = {
    config: null, token: sessionStorage.getItem("kenpin-token"), lastId: null,
    counts: { ok: 0, defect: 0, retake: 0 }, nextBefore: null, filters: {},
    latencies: [], // page latency per verdict (s): shown − decided, for the tests and the load script
  };
  window.kenpinPage = state;

  // ---------- small helpers ----------
  const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const fmtDateTime = (t) => new Date(t * 1000).toLocaleString([], { hour12: false });
  const fmt = (v, d = 3) => (v == null ? "–" : Number(v).toFixed(d));
  const decidedAt = (r) => r.time + r.latency_ms / 1000;

  function node(tag, text, cls) {
    const n = document.createElement(tag);
    if (text != null) n.textContent = text;
    if (cls) n.className = cls;
    return n;
  }

  function badge(verdict) { return node("span", verdict, `badge ${verdict}`); }

  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    if (opts.auth && state.token) headers.Authorization = `Bearer ${state.token}`;
    const res = await fetch(path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
    if (res.status === 401 && !opts.auth && state.config && state.config.view === "token") openLogin();
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try { const body = await res.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
      const err = new Error(detail); err.status = res.status; throw err;
    }
    return (res.headers.get("content-type") || "").includes("json") ? res.json() : res;
  }

  function kv(host, pairs) {
    host.replaceChildren();
    for (const [k, v] of pairs) {
      host.appendChild(node("dt", k));
      host.appendChild(node("dd", v == null || v === "" ? "–" : String(v)));
    }
  }

  function message(el, text, kind) { el.textContent = text; el.className = `msg ${kind || ""}`; }

  // ---------- tabs ----------
  const loaders = { history: () => loadHistory(true), stats: loadStats, station: loadStation };
  function showTab(name) {
    document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === `tab-${name}`));
    if (loaders[name]) loaders[name]().catch(showError);
    history.replaceState(null, "", `#${name}`);
  }
  function showError(e) { console.warn("kenpin:", e.message); }

  // ---------- live view ----------
  // One MJPEG stream (/api/live.mjpg) read with fetch: the station pushes each new frame instead
  // of every page asking for it. Each part carries Content-Length, so no scanning for boundaries.
  function findHeaderEnd(buf) {  // index of the blank line (\r\n\r\n) ending a part's headers
    for (let i = 0; i + 3 < buf.length; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
    }
    return -1;
  }
  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }
  function showFrame(jpeg) {
    const img = $("#live-img"), old = img.src;
    img.src = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    img.dataset.frames = Number(img.dataset.frames || 0) + 1;
    $("#live-missing").classList.add("hidden");
  }
  // Complete parts at the start of buf are shown; what is left (a part still arriving) is returned.
  function takeParts(buf) {
    for (;;) {
      const end = findHeaderEnd(buf);
      if (end < 0) return buf;
      const m = /content-length:\s*(\d+)/i.exec(new TextDecoder().decode(buf.subarray(0, end)));
      if (!m) throw new Error("live stream: a part without Content-Length");
      const start = end + 4, len = Number(m[1]);
      if (buf.length < start + len) return buf;
      showFrame(buf.slice(start, start + len));
      buf = buf.subarray(start + len);
    }
  }
  async function streamLive() {
    let retryMs = 1000;
    for (;;) {
      const frames = Number($("#live-img").dataset.frames || 0);
      const noFrame = setTimeout(() => {  // connected, but the camera has sent nothing yet
        if (Number($("#live-img").dataset.frames || 0) === frames) $("#live-missing").classList.remove("hidden");
      }, 3000);
      try {
        const res = await fetch("/api/live.mjpg", { cache: "no-store", credentials: "same-origin" });
        if (!res.ok || !res.body) throw new Error(`live stream: HTTP ${res.status}`);
        const reader = res.body.getReader();
        let buf = new Uint8Array(0);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf = takeParts(concat(buf, value));
          retryMs = 1000;
        }
      } catch (e) {
        showError(e);
      } finally {
        clearTimeout(noFrame);
      }
      $("#live-missing").classList.remove("hidden");
      await new Promise((r) => setTimeout(r, retryMs));
      retryMs = Math.min(retryMs * 2, 5000);
    }
  }

  function showLiveVerdict(r) {
    const box = $(".frame-box");
    box.classList.remove("ok", "defect", "retake");
    box.classList.add(r.verdict);
    const b = $("#live-badge");
    b.className = `badge big ${r.verdict}`;
    b.textContent = r.verdict;
    $("#live-meta").textContent = `#${r.id ?? "–"}  ${fmtTime(r.time)}  score ${fmt(r.score)} / ${fmt(r.threshold, 2)}  ${fmt(r.latency_ms, 0)} ms`;
    const heat = $("#live-heat");
    if (r.verdict === "defect" && r.heatmap_ref && r.id != null) {
      heat.src = `/api/verdicts/${r.id}/heatmap`;
      heat.classList.remove("hidden");
    } else {
      heat.classList.add("hidden");
    }
  }

  function addToFeed(r) {
    const li = node("li", null, "fresh");
    li.dataset.id = r.id;
    li.dataset.verdict = r.verdict;
    li.append(node("span", fmtTime(r.time), "muted"), node("span", `#${r.id ?? "–"}`), badge(r.verdict),
      node("span", `score ${fmt(r.score)}`));
    if (r.frame_ref || r.heatmap_ref) { li.classList.add("clickable"); li.addEventListener("click", () => openVerdict(r)); }
    const feed = $("#feed");
    feed.prepend(li);
    while (feed.children.length > 50) feed.lastChild.remove();
    return li;
  }

  function onVerdict(r) {
    const li = addToFeed(r);
    showLiveVerdict(r);
    state.counts[r.verdict] += 1;
    $(`#n-${r.verdict}`).textContent = state.counts[r.verdict];
    const shown = Date.now() / 1000;
    li.dataset.shownAt = shown.toFixed(3);
    state.latencies.push(shown - decidedAt(r));
    if (state.latencies.length > 5000) state.latencies.shift();
    state.lastId = r.id;
    window.kenpinProducts.onVerdict(r, api);
  }

  function connectEvents() {
    const es = new EventSource("/api/events");
    es.addEventListener("open", () => { $("#conn").className = "dot on"; });
    es.addEventListener("error", () => { $("#conn").className = "dot off"; });
    es.addEventListener("verdict", (ev) => onVerdict(JSON.parse(ev.data)));
  }

  async function loadLiveState() {
    const s = await api("/api/live");
    if (s.verdict) showLiveVerdict(s.verdict);
  }

  // ---------- history ----------
  function toEpoch(v) { return v ? new Date(v).getTime() / 1000 : null; }
  function readFilters() {
    const f = new FormData($("#filters"));
    const out = {};
    if (f.get("verdict")) out.verdict = f.get("verdict");
    for (const k of ["since", "until"]) { const t = toEpoch(f.get(k)); if (t != null) out[k] = t; }
    for (const k of ["min_score", "max_score"]) if (f.get(k) !== "") out[k] = Number(f.get(k));
    return out;
  }

  async function loadHistory(reset) {
    if (reset) { state.nextBefore = null; state.filters = readFilters(); $("#history-rows").replaceChildren(); }
    const q = new URLSearchParams(Object.assign({ limit: 50 }, state.filters));
    if (state.nextBefore) q.set("before_id", state.nextBefore);
    const page = await api(`/api/verdicts?${q}`);
    for (const r of page.items) $("#history-rows").appendChild(historyRow(r));
    state.nextBefore = page.next_before_id;
    $("#more-btn").classList.toggle("hidden", !state.nextBefore);
  }

  function historyRow(r) {
    const tr = node("tr");
    tr.dataset.id = r.id;
    const kept = r.frame_ref || r.heatmap_ref;
    const img = node("td");
    if (kept) { const a = node("a", "open"); a.href = "#"; img.appendChild(a); }
    tr.append(node("td", r.id), node("td", fmtDateTime(r.time)), cell(badge(r.verdict)), node("td", fmt(r.score)),
      node("td", fmt(r.threshold, 2)), node("td", `${fmt(r.latency_ms, 0)} ms`), node("td", r.trigger_source), img);
    if (kept) { tr.classList.add("clickable"); tr.addEventListener("click", (e) => { e.preventDefault(); openVerdict(r); }); }
    return tr;
  }
  function cell(child) { const td = node("td"); td.appendChild(child); return td; }

  function openVerdict(r) {
    $("#vd-title").replaceChildren(node("span", `Verdict #${r.id} `), badge(r.verdict),
      ...(r.retake_reason ? [node("span", ` ${r.retake_reason}`)] : []));
    for (const [id, kind, ref] of [["#vd-image", "image", r.frame_ref], ["#vd-heat", "heatmap", r.heatmap_ref]]) {
      const img = $(id);
      img.closest("figure").classList.toggle("hidden", !ref);
      if (ref) img.src = `/api/verdicts/${r.id}/${kind}`; else img.removeAttribute("src");
    }
    kv($("#vd-info"), [["time", fmtDateTime(r.time)], ["score / threshold", `${fmt(r.score)} / ${fmt(r.threshold, 2)}`],
      ["quality", fmt(r.quality)], ["frames", r.frames > 1 ? `best of ${r.frames} by quality` : "1"],
      ["grade", r.grade == null ? "–" : `above ${Math.round(100 * r.grade)} % of rated parts`],
      ["latency", `${fmt(r.latency_ms, 1)} ms`], ["bundle", r.bundle_id],
      ["trigger", `${r.trigger_source}${r.trigger_id != null ? " #" + r.trigger_id : ""}`]]);
    message($("#mark-msg"), "");
    $("#verdict-dialog").dataset.id = r.id;
    $("#verdict-dialog").showModal();
  }

  async function markWrong(correct) {
    const id = $("#verdict-dialog").dataset.id;
    try {
      const res = await api(`/api/verdicts/${id}/mark`, { method: "POST", auth: true,
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ correct }) });
      message($("#mark-msg"), `kept for retraining as ${correct}: ${res.saved}`, "good");
    } catch (e) { message($("#mark-msg"), e.message, "error"); }
  }

  function exportCsv() {
    const f = readFilters();
    const q = new URLSearchParams();
    if (f.since != null) q.set("since", f.since);
    if (f.until != null) q.set("until", f.until);
    window.location.href = `/api/verdicts.csv?${q}`;
  }

  // ---------- statistics ----------
  function bucketLabel(start, bucket) {
    const d = new Date(start * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    return bucket >= 86400 ? d.toLocaleDateString() : hm;
  }

  function tile(host, k, v, bad) {
    const t = node("div", null, `tile${bad ? " bad" : ""}`);
    t.append(node("div", v, "v"), node("div", k, "k"));
    host.appendChild(t);
  }

  async function loadStats() {
    const f = new FormData($("#stats-form"));
    const until = Date.now() / 1000, since = until - Number(f.get("window")), bucket = Number(f.get("bucket"));
    const q = `since=${since}&until=${until}&bucket_s=${bucket}`;
    const [s, trend, st] = await Promise.all([api(`/api/stats?${q}`), api(`/api/trend?${q}`), api("/api/station")]);
    const tiles = $("#tiles");
    tiles.replaceChildren();
    tile(tiles, "parts in window", s.counts.total);
    tile(tiles, "yield (ok / judged)", s.yield == null ? "–" : `${(s.yield * 100).toFixed(1)} %`);
    tile(tiles, "defects", s.counts.defect, s.counts.defect > 0);
    tile(tiles, "retakes", s.counts.retake);
    const c = st.counters || {}, parts = (c.ok || 0) + (c.defect || 0) + (c.retake || 0);
    tile(tiles, "throughput (parts/min since start)", st.uptime_s ? (parts / st.uptime_s * 60).toFixed(1) : "–");
    const pm = st.processing_ms || {};
    tile(tiles, "processing ms p50 / p99", `${fmt(pm.p50, 1)} / ${fmt(pm.p99, 1)}`);
    tile(tiles, "latency ms min/avg/max", `${fmt(s.latency_ms.min, 0)}/${fmt(s.latency_ms.avg, 0)}/${fmt(s.latency_ms.max, 0)}`);
    const cam = st.camera || {};
    tile(tiles, "camera", cam.connected === false ? "disconnected" : (cam.state || "ok"), cam.connected === false);
    const rec = (st.store || st.record || {});
    tile(tiles, "disk free", rec.disk_free_bytes == null ? "–" : `${(rec.disk_free_bytes / 2 ** 30).toFixed(1)} GB`, rec.degraded);
    if (rec.degraded) tile(tiles, "recording degraded", rec.reason || "yes", true);

    const labels = s.buckets.map((b) => bucketLabel(b.start, bucket));
    KenpinCharts.stackedBars($("#chart-counts"), { labels,
      series: ["ok", "defect", "retake"].map((name) => ({ name, values: s.buckets.map((b) => b[name]) })),
      line: { values: s.buckets.map((b) => b.yield) } });
    KenpinCharts.histogram($("#chart-hist"), { edges: s.histogram.edges, counts: s.histogram.counts, threshold: s.threshold });
    KenpinCharts.lines($("#chart-trend"), { labels: trend.buckets.map((b) => bucketLabel(b.start, bucket)),
      series: [{ name: "mean", values: trend.buckets.map((b) => b.mean) }, { name: "p95", values: trend.buckets.map((b) => b.p95) }],
      threshold: trend.threshold });
    window.kenpinProducts.showStats(s);
  }

  // ---------- station ----------
  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return `${d ? d + " d " : ""}${h} h ${m} min`;
  }

  // Nested status objects as readable "a.b  value" rows (numbers rounded), not JSON blobs.
  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out.push([key, typeof v === "number" && !Number.isInteger(v) ? Number(v.toFixed(3)) : Array.isArray(v) ? v.join(" × ") : v]);
    }
    return out;
  }

  async function loadStation() {
    const [st, audit] = await Promise.all([api("/api/station"), api("/api/audit?limit=100")]);
    $("#threshold-now").textContent = fmt(st.threshold, 3);
    window.kenpinProducts.showStation(st);
    kv($("#station-info"), [["name", st.name], ["version", st.version], ["uptime", duration(st.uptime_s || 0)],
      ["live pages", st.dashboard.live_clients]].concat(flatten({ camera: st.camera, counters: st.counters,
      processing_ms: st.processing_ms, queues: st.queues })));
    kv($("#bundle-info"), flatten(st.bundle).concat([["previous (roll-back)", st.previous_bundle]]));
    kv($("#config-info"), flatten(st.config));
    const rows = $("#audit-rows");
    rows.replaceChildren();
    for (const a of audit.items) {
      const tr = node("tr");
      tr.append(node("td", fmtDateTime(a.time)), node("td", a.event), node("td", a.who),
        node("td", JSON.stringify(a.detail), "detail"));
      rows.appendChild(tr);
    }
  }

  async function action(path, opts, okText) {
    const msg = $("#action-msg");
    if (!state.token) {
      message(msg, "This change needs the quality engineer's token: log in first.", "error");
      openLogin();
      return null;
    }
    try {
      const res = await api(path, Object.assign({ method: "POST", auth: true }, opts));
      message(msg, okText(res), "good");
      loadStation().catch(showError);
      return res;
    } catch (e) {
      message(msg, e.status === 401 || e.status === 403 ? `Refused: ${e.message}` : e.message, "error");
      return null;
    }
  }

  // ---------- login ----------
  function openLogin() {
    const d = $("#login-dialog");
    if (!d.open) { message($("#login-msg"), ""); d.showModal(); }
  }

  async function login(token) {
    const res = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin" });
    if (!res.ok) { const body = await res.json().catch(() => ({})); throw new Error(body.detail || res.statusText); }
    const { role } = await res.json();
    if (role === "engineer") { state.token = token; sessionStorage.setItem("kenpin-token", token); }
    setRole(role);
    return role;
  }

  function setRole(role) {
    document.body.classList.toggle("engineer", role === "engineer");
    $("#login-btn").textContent = role === "engineer" ? "Engineer ✓ (log out)" : "Engineer login";
  }

  function logout() { state.token = null; sessionStorage.removeItem("kenpin-token"); setRole(null); }

  // ---------- wiring ----------
  function wire() {
    document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
    $("#filters").addEventListener("submit", (e) => { e.preventDefault(); loadHistory(true).catch(showError); });
    $("#more-btn").addEventListener("click", () => loadHistory(false).catch(showError));
    $("#csv-btn").addEventListener("click", exportCsv);
    $("#stats-form").addEventListener("submit", (e) => { e.preventDefault(); loadStats().catch(showError); });
    $("#mark-good").addEventListener("click", () => markWrong("good"));
    $("#mark-defect").addEventListener("click", () => markWrong("defect"));
    $("#trigger-btn").addEventListener("click", () => action("/api/trigger", {}, (r) => `trigger #${r.trigger_id} sent`));
    $("#threshold-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = Number(new FormData(e.target).get("threshold"));
      action("/api/threshold", { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ threshold: v }) },
        (r) => `threshold set to ${fmt(r.threshold, 3)} (undo restores the previous one)`);
    });
    $("#undo-btn").addEventListener("click", () => action("/api/threshold/undo", {}, (r) => `threshold back to ${fmt(r.threshold, 3)}`));
    $("#bundle-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const file = new FormData(e.target).get("file");
      if (state.config && file.size > state.config.max_upload_mb * 2 ** 20) {
        message($("#action-msg"), `the file is over the ${state.config.max_upload_mb} MB upload limit`, "error");
        return;
      }
      const body = new FormData();
      body.append("file", file);
      message($("#action-msg"), "uploading and verifying…");
      action("/api/bundle", { body }, (r) => `bundle ${r.activated.bundle_id || ""} verified and active`);
    });
    $("#rollback-btn").addEventListener("click", () => action("/api/bundle/rollback", {}, () => "rolled back to the previous bundle"));
    window.kenpinProducts.wire(action);
    $("#login-btn").addEventListener("click", () => (state.token ? logout() : openLogin()));
    $("#login-cancel").addEventListener("click", () => $("#login-dialog").close());
    $("#login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = new FormData(e.target).get("token");
      try {
        const role = await login(token);
        $("#login-dialog").close();
        e.target.reset();
        if (role !== "engineer") message($("#action-msg"), "logged in to view; actions need the engineer's token");
        start();
      } catch (err) { message($("#login-msg"), err.message, "error"); }
    });
    setInterval(() => { $("#clock").textContent = new Date().toLocaleTimeString([], { hour12: false }); }, 1000);
  }

  let started = false;
  function start() {
    if (started) return;
    api("/api/live").then((s) => {
      started = true;
      if (s.verdict) showLiveVerdict(s.verdict);
      window.kenpinProducts.refresh(api);
      connectEvents();
      streamLive();
      const tab = location.hash.slice(1);
      showTab(["live", "history", "stats", "station"].includes(tab) ? tab : "live");
    }).catch((e) => { if (e.status !== 401) showError(e); });
  }

  async function boot() {
    wire();
    state.config = await api("/api/config");
    $("#station-name").textContent = state.config.station;
    document.title = `kenpin · ${state.config.station}`;
    if (state.token) await login(state.token).catch(logout);
    start();
  }

  document.addEventListener("DOMContentLoaded", () => boot().catch(showError));
})();
