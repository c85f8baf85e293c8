// tiercache dashboard: polls the cache's JSON endpoints and renders them. No dependencies.
// Every rendered figure carries data-figure="name" and, for numbers, data-value="raw".
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const refresh = Math.min(3600, Math.max(0.5, parseFloat(params.get("refresh")) || 5));
  const MAX_POINTS = 120;
  const samples = []; // {t, total, interval}: hit rate since start and between two polls
  let prev = null; // the previous stats answer, for the between-polls rate
  let failingSince = null;
  const $ = (s) => document.querySelector(s);
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const int = (v) => (v === null ? "–" : v.toLocaleString("en-US"));
  const pct = (r) => (r === null ? "–" : (r * 100).toFixed(1) + "%");
  const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });

  function bytes(n) {
    if (n === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function duration(sec) {
    if (sec === null) return "–";
    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24;
    const m = Math.floor(sec / 60) % 60, s = Math.floor(sec % 60);
    return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
  }

  // Sets every element named `name`: its text, and its raw value when there is one.
  function fig(name, text, value, state) {
    for (const el of document.querySelectorAll(`[data-figure="${name}"]`)) {
      el.textContent = text;
      if (value === undefined || value === null) el.removeAttribute("data-value");
      else el.dataset.value = String(value);
      if (state !== undefined) el.dataset.state = state;
    }
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }

  function figureCell(field, value, text) {
    const td = el("td", { "data-field": field }, text);
    if (value !== null) td.dataset.value = String(value);
    return td;
  }

  function renderStats(s) {
    const hits = num(s.hits), misses = num(s.misses), local = num(s.local_hits);
    const rate = num(s.hit_rate);
    fig("mode", s.mode || "–");
    fig("hit_rate", pct(rate), rate);
    fig("hits", int(hits), hits);
    fig("misses", int(misses), misses);
    const keys = num(s.total_keys ?? s.keys);
    fig("keys", keys === null ? "n/a" : int(keys), keys);

    const redisHits = hits !== null && local !== null ? hits - local : null;
    fig("local_hits", int(local), local);
    fig("redis_hits", int(redisHits), redisHits);
    fig("tier_misses", int(misses), misses);
    const all = (hits || 0) + (misses || 0);
    const parts = [local || 0, redisHits || 0, misses || 0];
    document.querySelectorAll("#tierbar i").forEach((i, n) => {
      i.style.width = all ? (100 * parts[n]) / all + "%" : "0";
    });

    const used = num(s.memory_used_bytes ?? s.used_memory_bytes);
    const max = num(s.maxmemory_bytes ?? s.max_memory_bytes);
    fig("used_memory", used === null ? "Redis memory not reported" : bytes(used), used);
    $("#memline").classList.toggle("none", used === null);
    fig("maxmemory", max ? bytes(max) : s.connected ? "no limit" : "n/a", max);
    const share = used !== null && max ? used / max : null;
    fig("memory_pct", share === null ? "" : "(" + pct(share) + ")", share);
    const bar = $("#membar");
    bar.style.width = share === null ? "0" : Math.min(100, share * 100) + "%";
    bar.classList.toggle("warn", share !== null && share > 0.8);
    const ev = num(s.evictions ?? s.evicted_keys);
    fig("evictions", ev === null ? "n/a" : int(ev), ev);

    const l = s.local || null;
    fig("local_entries", l ? int(num(l.entries)) : "no tier", l ? num(l.entries) : null);
    fig("local_size", l ? bytes(num(l.size_bytes)) : "–", l ? num(l.size_bytes) : null);
    fig("local_evictions", l ? int(num(l.evictions)) : "–", l ? num(l.evictions) : null);
    fig("channel_losses", l ? int(num(l.channel_losses)) : "–", l ? num(l.channel_losses) : null);
    if (s.mode !== "redis") fig("channel", "not used", null, "unknown");
    else if (!l) fig("channel", "not used (no in-process tier)", null, "unknown");
    else if (l.live) fig("channel", "live", null, "ok");
    else fig("channel", "not live: tier bypassed", null, "bad");

    const errors = num(s.errors), timeouts = num(s.timeouts);
    fig("errors", `${int(errors)} · ${int(timeouts)}`, errors);
    fig("uptime", duration(num(s.uptime)), num(s.uptime));

    // The breaker: as reported if the service reports it, else from `connected`, which
    // tiercache defines as "Redis mode and the breaker closed".
    const b = s.breaker ?? null;
    const state = b && typeof b === "object" ? b.state : b;
    const shorts = num(s.short_circuits);
    const extra = shorts ? ` · ${int(shorts)} short-circuited` : "";
    if (typeof state === "string") {
      fig("breaker", state + extra, null, state === "closed" ? "ok" : state === "open" ? "bad" : "warn");
    } else if (s.mode === "redis") {
      fig("breaker", (s.connected ? "closed" : "open") + extra, null, s.connected ? "ok" : "bad");
    } else fig("breaker", "not used", null, "unknown");

    renderCategories(s.categories || {});
    addSample(s);
  }

  function renderCategories(cats) {
    const rows = Object.entries(cats).sort(([a], [b]) => (a < b ? -1 : 1)).map(([name, c]) => {
      const h = num(c.hits), m = num(c.misses), lh = num(c.local_hits);
      const r = h !== null && m !== null && h + m > 0 ? h / (h + m) : null;
      const bar = el("div", { class: "bar" }, el("i"));
      bar.firstChild.style.width = r === null ? "0" : r * 100 + "%";
      return el("tr", { "data-category": name },
        el("th", {}, name),
        figureCell("hits", h, int(h)),
        figureCell("local_hits", lh, lh === null ? "–" : int(lh)),
        figureCell("misses", m, int(m)),
        figureCell("hit_rate", r, pct(r)),
        el("td", { class: "barcol" }, bar));
    });
    // The in-process column only when the service reports it per category.
    $("#category-table").classList.toggle("no-local", !Object.values(cats).some((c) => num(c.local_hits) !== null));
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "text muted", colSpan: 6 }, "no reads yet")));
    $("#category-rows").replaceChildren(...rows);
  }

  function renderHealth(h, status) {
    if (h.mode === "redis" || h.mode === undefined) {
      const up = h.status === "up";
      const ms = num(h.latency_ms);
      fig("redis", up ? "up" + (ms === null ? "" : ` · ${ms.toFixed(2)} ms`) : "down" + (h.error ? ": " + h.error : ""),
        null, up ? "ok" : "bad");
    } else fig("redis", h.mode === "standalone" ? "not used" : "cache disabled", null,
      h.mode === "standalone" ? "unknown" : "bad");
    if (h.breaker !== undefined && typeof h.breaker === "string") fig("breaker", h.breaker, null, h.breaker === "closed" ? "ok" : "bad");

    const list = $("#alert-list");
    if (!Array.isArray(h.alerts)) {
      list.dataset.state = "unavailable";
      list.replaceChildren(el("li", { class: "muted" }, `not reported (health answered ${status})`));
      return;
    }
    list.dataset.state = h.alerts.length ? "active" : "none";
    if (!h.alerts.length) { list.replaceChildren(el("li", { class: "ok" }, "No active alerts")); return; }
    list.replaceChildren(...h.alerts.map((a) => {
      const val = num(a.value), thr = num(a.threshold);
      const detail = [];
      if (val !== null) detail.push("value " + +val.toFixed(4));
      if (thr !== null) detail.push("threshold " + +thr.toFixed(4));
      if (num(a.since_unix_ms) !== null) detail.push("since " + clock(a.since_unix_ms) + " (" + ago(a.since_unix_ms) + ")");
      return el("li", { class: "alert", "data-alert": String(a.name) },
        el("b", {}, String(a.name)), String(a.message || ""),
        el("div", { class: "muted" }, detail.join(" · ")));
    }));
  }

  function renderInvalidations(body, status) {
    const tbody = $("#invalidation-rows");
    const list = body && Array.isArray(body.invalidations) ? body.invalidations : null;
    fig("instance", body && body.instance ? String(body.instance) : "–");
    if (!list) {
      tbody.dataset.state = "unavailable";
      tbody.replaceChildren(el("tr", {}, el("td", { class: "text muted", colSpan: 4 }, `not available (answered ${status})`)));
      return;
    }
    tbody.dataset.state = list.length ? "listed" : "none";
    if (!list.length) {
      tbody.replaceChildren(el("tr", {}, el("td", { class: "text muted", colSpan: 4 }, "none yet")));
      return;
    }
    tbody.replaceChildren(...list.map((r) => {
      const at = num(r.at_unix_ms) ?? Date.parse(r.at);
      // Names come only with the admin token, which the page never has: counts instead.
      const n = num(r.target_count) ?? 0;
      const what = r.kind === "clear" ? "everything" : `${n} ${r.kind}${n === 1 ? "" : "s"}`;
      const by = r.own ? "this instance" : String(r.instance || "?");
      return el("tr", { "data-kind": String(r.kind), "data-own": String(!!r.own) },
        el("td", { class: "nowrap", title: String(r.at || "") }, isFinite(at) ? `${clock(at)} · ${ago(at)}` : "–"),
        el("td", { class: "text" }, String(r.kind)),
        el("td", { class: "text", "data-field": "targets" }, what),
        el("td", { class: "text nowrap", "data-field": "instance" }, by));
    }));
  }

  function addSample(s) {
    let interval = null;
    if (prev) {
      const dh = s.hits - prev.hits, dm = s.misses - prev.misses;
      if (dh >= 0 && dm >= 0 && dh + dm > 0) interval = dh / (dh + dm);
    }
    prev = s;
    samples.push({ t: Date.now(), total: num(s.hit_rate) ?? 0, interval });
    if (samples.length > MAX_POINTS) samples.shift();
    drawChart();
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function drawChart() {
    const chart = $("#chart");
    const W = Math.max(200, chart.clientWidth || 600), H = Math.max(120, chart.clientHeight || 200);
    const L = 40, R = 10, T = 8, B = 20;
    chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const nodes = [];
    const y = (r) => T + (1 - r) * (H - T - B);
    for (const r of [0, 0.25, 0.5, 0.75, 1]) {
      nodes.push(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(r), y2: y(r) }));
      const label = svg("text", { x: L - 6, y: y(r) + 4, "text-anchor": "end" });
      label.textContent = r * 100 + "%";
      nodes.push(label);
    }
    const t0 = samples.length ? samples[0].t : 0, t1 = samples.length ? samples[samples.length - 1].t : 0;
    const span = Math.max(t1 - t0, refresh * 1000);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    if (samples.length) {
      const a = svg("text", { x: L, y: H - 4 }), b = svg("text", { x: W - R, y: H - 4, "text-anchor": "end" });
      a.textContent = clock(t0);
      b.textContent = clock(t1);
      nodes.push(a, b);
    }
    for (const series of ["total", "interval"]) {
      const pts = samples.filter((p) => p[series] !== null).map((p) => [x(p.t), y(p[series])]);
      if (pts.length > 1) nodes.push(svg("polyline", { class: series, points: pts.map((p) => p.join(",")).join(" ") }));
      for (const [cx, cy] of pts) nodes.push(svg("circle", { class: series, "data-series": series, cx, cy, r: (series === "total" ? 3 : 2.5) * (pts.length > 40 ? 0.5 : 1) }));
    }
    chart.replaceChildren(...nodes);
    chart.dataset.points = String(samples.length);
  }

  // One answer: the JSON body, whatever the status (health answers 503 with a body when Redis
  // is down). A network failure or a body that is not JSON rejects.
  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    const body = await r.json();
    return { status: r.status, ok: r.ok, body };
  }

  async function tick() {
    const [stats, health, inv] = await Promise.allSettled([
      getJson("/api/cache/stats"),
      getJson("/api/cache/health"),
      getJson("/api/cache/invalidations?limit=15"),
    ]);
    const statsOk = stats.status === "fulfilled" && stats.value.ok;
    if (statsOk) renderStats(stats.value.body);
    if (health.status === "fulfilled") renderHealth(health.value.body, health.value.status);
    if (inv.status === "fulfilled") renderInvalidations(inv.value.ok ? inv.value.body : null, inv.value.status);
    const conn = $("#conn");
    if (statsOk) {
      failingSince = null;
      conn.dataset.state = "live";
      conn.textContent = "live";
      $("#updated").textContent = "updated " + clock(Date.now());
    } else {
      failingSince = failingSince ?? Date.now();
      conn.dataset.state = "unreachable";
      conn.textContent = "unreachable since " + clock(failingSince) + " · showing the last figures";
    }
    setTimeout(tick, refresh * 1000);
  }

  $("#every").textContent = refresh + " s";
  addEventListener("resize", drawChart);
  tick();
})();
