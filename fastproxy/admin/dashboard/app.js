// The fastproxy dashboard: polls the admin listener's JSON endpoints and follows the
// health event stream; no framework, no build step (docs/dashboard.md).
//
// Every string from an endpoint reaches the DOM through textContent, never innerHTML:
// session ids, model names and error texts come from clients and backends.
"use strict";

(() => {
  const TICK_MS = 2000;
  const HISTORY = 150; // chart points: five minutes at one every 2 s
  const MAX_EVENTS = 200;
  const KEY_SLOT = "fastproxy-admin-key";
  // The stats breakdowns shown first, in this order; any other "by_*" object follows.
  const BREAKDOWN_ORDER = ["by_backend", "by_model", "by_key"];
  const TIMINGS = [
    ["ttft_stats", "TTFT"],
    ["proxy_overhead_stats", "proxy overhead"],
    ["duration_stats", "total duration"],
  ];

  const state = {
    key: sessionStorage.getItem(KEY_SLOT) || "",
    metrics: null, // {at, total, errors}: the previous /metrics sample, for rates
    traffic: [[], []],
    latency: [[], [], []],
    connections: new Map(), // "backend/id" -> {at, rx, tx}, for rates as in `fastproxy top`
    events: [],
    stream: null, // AbortController of the event stream fetch
    ticking: false,
  };

  const $ = (id) => document.getElementById(id);

  // -- formatting ----------------------------------------------------------------------
  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const msFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });
  const rateFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  const costFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 });
  const num = (v, f = intFmt) => (v === null || v === undefined ? "–" : f.format(v));

  function bytes(n) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  function duration(s) {
    if (s < 60) return `${s.toFixed(1)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  // -- DOM helpers (text only) -------------------------------------------------------------
  function cell(row, text, cls, attrs) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, String(v));
    row.appendChild(td);
    return td;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function note(id, text) {
    const el = $(id);
    el.hidden = !text;
    el.textContent = text || "";
  }

  // -- fetching ----------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function authHeaders() {
    // EventSource cannot send headers, so the event stream is read with fetch as well.
    return state.key ? { Authorization: `Bearer ${state.key}` } : {};
  }

  async function detailOf(resp) {
    try {
      const body = await resp.json();
      return typeof body.detail === "string" ? body.detail : resp.statusText;
    } catch (_) {
      return resp.statusText;
    }
  }

  async function get(path, asText) {
    const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (!resp.ok) {
      const detail = await detailOf(resp);
      if (resp.status === 401) askForKey(detail);
      throw new HttpError(resp.status, detail);
    }
    return asText ? resp.text() : resp.json();
  }

  // -- the admin key -----------------------------------------------------------------------
  function askForKey(reason) {
    $("key-reason").textContent = reason ? `The gateway answered: ${reason}` : "";
    $("key-form").hidden = false;
  }

  function setupKeyForm() {
    $("key-button").addEventListener("click", () => askForKey(""));
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.key = $("key-input").value.trim();
      $("key-input").value = "";
      if (state.key) sessionStorage.setItem(KEY_SLOT, state.key);
      else sessionStorage.removeItem(KEY_SLOT);
      $("key-form").hidden = true;
      restartStream();
      tick();
    });
    $("key-forget").addEventListener("click", () => {
      state.key = "";
      sessionStorage.removeItem(KEY_SLOT);
      $("key-form").hidden = true;
      restartStream();
      tick();
    });
  }

  // -- /metrics: requests and errors per second ----------------------------------------------
  // Sums fastproxy_requests_total over its labels: every sample is a request count,
  // errors are the 4xx, 5xx and no-status ("none") classes, as in the usage stats.
  function parseMetrics(text) {
    let total = 0;
    let errors = 0;
    let inFlight = null;
    for (const line of text.split("\n")) {
      if (line.startsWith("fastproxy_requests_total{")) {
        const value = Number(line.slice(line.lastIndexOf(" ") + 1));
        if (!Number.isFinite(value)) continue;
        total += value;
        const m = /status_class="([^"]*)"/.exec(line);
        if (m && m[1] !== "2xx" && m[1] !== "3xx" && m[1] !== "1xx") errors += value;
      } else if (line.startsWith("fastproxy_requests_in_flight ")) {
        inFlight = Number(line.slice(line.lastIndexOf(" ") + 1));
      }
    }
    return { total, errors, inFlight };
  }

  function onMetrics(text) {
    const now = performance.now();
    const m = parseMetrics(text);
    const prev = state.metrics;
    state.metrics = { at: now, total: m.total, errors: m.errors };
    setText("kpi-inflight", num(m.inFlight));
    if (!prev || m.total < prev.total || m.errors < prev.errors) return; // first, or a restart
    const span = (now - prev.at) / 1000;
    if (span <= 0) return;
    const rps = (m.total - prev.total) / span;
    const eps = (m.errors - prev.errors) / span;
    setText("kpi-rps", rateFmt.format(rps));
    setText("kpi-eps", rateFmt.format(eps));
    push(state.traffic[0], rps);
    push(state.traffic[1], eps);
    drawChart($("chart-traffic"), state.traffic);
  }

  function push(series, value) {
    series.push(value);
    if (series.length > HISTORY) series.shift();
  }

  // -- /v1/usage/stats ---------------------------------------------------------------------
  function errorCount(stats) {
    let n = 0;
    for (const [code, count] of Object.entries(stats.status_code_counts || {})) {
      const c = Number(code);
      if (!(c >= 100 && c < 400)) n += count; // 4xx, 5xx and "none" (no status)
    }
    return n;
  }

  function onStats(stats) {
    note("usage-note", "");
    setText("kpi-requests", num(stats.request_count));
    setText("kpi-errors", num(errorCount(stats)));
    setText("kpi-tokens", num(stats.total_tokens));
    setText("kpi-cost", num(stats.total_cost, costFmt));
    setText("kpi-sessions", num(stats.unique_sessions));
    renderLatency(stats);
    renderBreakdowns(stats);
    const ttft = stats.ttft_stats || {};
    const over = stats.proxy_overhead_stats || {};
    push(state.latency[0], ttft.p95_ms ?? null);
    push(state.latency[1], over.p95_ms ?? null);
    push(state.latency[2], ttft.p50_ms ?? null);
    drawChart($("chart-latency"), state.latency);
  }

  function renderLatency(stats) {
    const body = document.createElement("tbody");
    for (const [field, label] of TIMINGS) {
      const s = stats[field];
      const row = document.createElement("tr");
      row.dataset.stat = field;
      cell(row, label);
      cell(row, s ? num(s.count) : "–", "num", { "data-field": "count" });
      for (const k of ["p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms"]) {
        cell(row, s ? num(s[k], msFmt) : "–", "num", { "data-field": k });
      }
      body.appendChild(row);
    }
    $("latency").tBodies[0].replaceWith(body);
  }

  function breakdownNames(stats) {
    const names = BREAKDOWN_ORDER.filter((k) => isObject(stats[k]));
    for (const k of Object.keys(stats)) {
      if (k.startsWith("by_") && isObject(stats[k]) && !names.includes(k)) names.push(k);
    }
    return names;
  }

  function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  const BREAKDOWN_COLUMNS = [
    ["request_count", "requests", intFmt],
    ["error_count", "errors", intFmt],
    ["total_prompt_tokens", "prompt", intFmt],
    ["total_completion_tokens", "completion", intFmt],
    ["total_tokens", "tokens", intFmt],
    ["total_cost", "USD", costFmt],
    ["avg_duration_ms", "avg ms", msFmt],
  ];

  function renderBreakdowns(stats) {
    const holder = document.createElement("div");
    holder.id = "breakdowns";
    holder.className = "breakdowns";
    for (const name of breakdownNames(stats)) {
      const box = document.createElement("div");
      const h = document.createElement("h3");
      h.textContent = `by ${name.slice(3).replace(/_/g, " ")}`;
      box.appendChild(h);
      const scroll = document.createElement("div");
      scroll.className = "scroll";
      const table = document.createElement("table");
      table.id = `breakdown-${name}`;
      const head = table.createTHead().insertRow();
      const th = document.createElement("th");
      th.textContent = name.slice(3);
      head.appendChild(th);
      for (const [, label] of BREAKDOWN_COLUMNS) {
        const c = document.createElement("th");
        c.className = "num";
        c.textContent = label;
        head.appendChild(c);
      }
      const body = table.createTBody();
      for (const [key, group] of Object.entries(stats[name])) {
        const row = body.insertRow();
        row.dataset.name = key;
        cell(row, key);
        for (const [field, , fmt] of BREAKDOWN_COLUMNS) {
          cell(row, num(group[field], fmt), "num", { "data-field": field });
        }
      }
      scroll.appendChild(table);
      box.appendChild(scroll);
      holder.appendChild(box);
    }
    $("breakdowns").replaceWith(holder);
  }

  // -- /internal/health ------------------------------------------------------------------------
  function onHealth(doc) {
    const badge = $("status");
    badge.dataset.state = doc.status;
    badge.textContent = doc.status;
    const eh = doc.endpoint_health || {};
    const backends = document.createElement("tbody");
    for (const b of eh.backends || []) {
      const row = backends.insertRow();
      row.dataset.backend = b.name;
      cell(row, b.name);
      cell(row, b.backend_type);
      const healthy = b.is_endpoint_healthy ? "healthy" : "unhealthy";
      cell(row, healthy, "", { "data-field": "endpoint", "data-state": healthy });
      cell(row, b.circuit_state, "", { "data-field": "circuit_state", "data-state": b.circuit_state });
      cell(row, num(b.consecutive_failures), "num", { "data-field": "consecutive_failures" });
      cell(row, b.open_until, "", { "data-field": "open_until" });
      cell(row, b.last_failure, "wrap", { "data-field": "last_failure" });
    }
    $("backends").tBodies[0].replaceWith(backends);
    const endpoints = document.createElement("tbody");
    for (const ep of eh.endpoints || []) {
      const row = endpoints.insertRow();
      row.dataset.url = ep.api_url;
      cell(row, ep.api_url, "wrap");
      cell(row, ep.condition, "", { "data-field": "condition", "data-state": ep.condition });
      cell(row, ep.ping_status);
      cell(row, ep.http_status);
      cell(row, num(ep.last_http_latency_ms, msFmt), "num");
      cell(row, ep.last_http_error || ep.last_ping_error, "wrap");
    }
    $("endpoints").tBodies[0].replaceWith(endpoints);
  }

  // -- /v1/diagnostics: live connections, as `fastproxy top` shows them ----------------------------
  function onDiagnostics(doc) {
    const g = doc.global_activity;
    setText("kpi-active", g ? num(g.total_active_connections) : "off");
    if (!doc.activity_tracking_enabled) {
      note(
        "conns-note",
        "Activity tracking is off on this gateway (enable_activity_tracking: true, " +
          "ENABLE_ACTIVITY_TRACKING=1 or --enable-activity-tracking).",
      );
    } else {
      note("conns-note", "");
    }
    const now = performance.now();
    const seen = new Map();
    const rows = [];
    for (const inst of doc.instances || []) {
      for (const c of (inst.activity || {}).connections || []) {
        const id = `${inst.name}/${c.connection_id}`;
        const rx = Number(c.bytes_rx || 0);
        const tx = Number(c.bytes_tx || 0);
        const prev = state.connections.get(id);
        let span;
        let rxRate;
        let txRate;
        if (prev && now > prev.at) {
          span = (now - prev.at) / 1000;
          rxRate = (rx - prev.rx) / span;
          txRate = (tx - prev.tx) / span;
        } else {
          span = Math.max(Number(c.duration_seconds || 0), 1e-3);
          rxRate = rx / span;
          txRate = tx / span;
        }
        seen.set(id, { at: now, rx, tx });
        rows.push({ backend: inst.name, c, rx, tx, rxRate, txRate });
      }
    }
    state.connections = seen;
    rows.sort((a, b) => b.rxRate + b.txRate - (a.rxRate + a.txRate) || b.rx + b.tx - (a.rx + a.tx));
    const body = document.createElement("tbody");
    for (const r of rows) {
      const row = body.insertRow();
      row.dataset.connection = String(r.c.connection_id);
      cell(row, r.backend);
      cell(row, r.c.session_id || "-", "wrap");
      cell(row, r.c.connection_type);
      cell(row, r.c.model || "-");
      cell(row, duration(Number(r.c.duration_seconds || 0)), "num");
      cell(row, bytes(r.rx), "num");
      cell(row, bytes(r.tx), "num");
      cell(row, `${bytes(r.rxRate)}/s`, "num");
      cell(row, `${bytes(r.txRate)}/s`, "num");
    }
    $("connections").tBodies[0].replaceWith(body);
    setText(
      "conns-summary",
      g
        ? `${num(g.total_active_connections)} active · RX ${bytes(g.total_bytes_rx)} · TX ${bytes(g.total_bytes_tx)}`
        : "",
    );
  }

  // -- the health event stream -----------------------------------------------------------------
  function onEvent(kind, data) {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (_) {
      return;
    }
    state.events.unshift({ kind, ev });
    if (state.events.length > MAX_EVENTS) state.events.pop();
    renderEvents();
    refreshHealth(); // the tables follow the event at once, not at the next tick
  }

  function renderEvents() {
    const list = document.createElement("ol");
    list.id = "events";
    list.className = "events";
    for (const { kind, ev } of state.events) {
      const li = document.createElement("li");
      const subject = ev.backend || ev.api_url || ev.subject || "?";
      li.dataset.kind = kind;
      li.dataset.subject = subject;
      li.textContent = `${ev.at} ${kind} ${subject}: ${describe(kind, ev)}`;
      if ("to" in ev) {
        li.dataset.to = String(ev.to);
        li.className = `to-${String(ev.to).replace(/[^a-z_]/gi, "")}`;
      } else {
        li.className = `kind-${kind.replace(/[^a-z_]/gi, "")}`;
      }
      list.appendChild(li);
    }
    $("events").replaceWith(list);
  }

  // Transitions (endpoint, breaker) carry from/to; budget events a threshold
  // (docs/health.md); anything newer is shown as its fields.
  function describe(kind, ev) {
    if ("from" in ev && "to" in ev) {
      return `${ev.from} → ${ev.to}${ev.reason ? ` (${ev.reason})` : ""}`;
    }
    if (kind === "budget" && "threshold_percent" in ev) {
      return (
        `${ev.threshold_percent}% of its ${costFmt.format(ev.budget)} USD ${ev.period} ` +
        `budget spent (${costFmt.format(ev.spent)} USD); resets at ${ev.resets_at}`
      );
    }
    return Object.entries(ev)
      .filter(([k]) => k !== "at")
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" ");
  }

  function parseFrame(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      let value = at < 0 ? "" : line.slice(at + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) onEvent(kind, data.join("\n"));
  }

  async function followEvents(ctl) {
    while (!ctl.signal.aborted) {
      try {
        const resp = await fetch("/internal/health/events", {
          headers: authHeaders(),
          cache: "no-store",
          signal: ctl.signal,
        });
        if (!resp.ok || !resp.body) throw new HttpError(resp.status, await detailOf(resp));
        setText("events-state", "live");
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let m;
          while ((m = /\r?\n\r?\n/.exec(buf)) !== null) {
            parseFrame(buf.slice(0, m.index));
            buf = buf.slice(m.index + m[0].length);
          }
        }
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (err instanceof HttpError && err.status === 401) askForKey(err.detail);
      }
      setText("events-state", "reconnecting");
      await new Promise((r) => setTimeout(r, 3000));
    }
  }

  function restartStream() {
    if (state.stream) state.stream.abort();
    state.stream = new AbortController();
    followEvents(state.stream);
  }

  // -- charts: one canvas, a few series, our own drawing ------------------------------------------
  function drawChart(canvas, series) {
    const css = getComputedStyle(document.documentElement);
    const colors = ["--s0", "--s1", "--s2"].map((v) => css.getPropertyValue(v).trim());
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight || Number(canvas.getAttribute("height"));
    if (!w || !h) return;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    let max = 0;
    for (const s of series) for (const v of s) if (v !== null && v > max) max = v;
    max = niceCeiling(max);
    const left = 44;
    const top = 6;
    const plotW = w - left - 6;
    const plotH = h - top - 16;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = css.getPropertyValue("--muted").trim();
    ctx.strokeStyle = css.getPropertyValue("--line").trim();
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + plotW, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(rateFmt.format((max * i) / 4), 2, y + 4);
    }
    ctx.fillText(`last ${Math.round((HISTORY * TICK_MS) / 60000)} min`, left, h - 2);
    series.forEach((s, i) => {
      ctx.strokeStyle = colors[i % colors.length];
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let drawing = false;
      let last = null;
      s.forEach((v, j) => {
        if (v === null) {
          drawing = false;
          return;
        }
        const x = left + plotW - ((s.length - 1 - j) * plotW) / (HISTORY - 1);
        const y = top + plotH - (max ? (v / max) * plotH : 0);
        if (drawing) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        drawing = true;
        last = [x, y];
      });
      ctx.stroke();
      if (last) {
        // The newest value as a dot: a lone first sample is visible too.
        ctx.fillStyle = colors[i % colors.length];
        ctx.beginPath();
        ctx.arc(last[0], last[1], 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
  }

  function niceCeiling(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // -- the loop -------------------------------------------------------------------------------------
  function refreshHealth() {
    return get("/internal/health").then(onHealth, (err) => failed("status", err));
  }

  function failed(where, err) {
    if (where === "status") {
      const badge = $("status");
      badge.dataset.state = "error";
      badge.textContent = err instanceof HttpError ? `error ${err.status}` : "unreachable";
    }
    return err;
  }

  async function tick() {
    // A hidden tab polls nothing: a forgotten dashboard costs the gateway no queries.
    if (state.ticking || document.hidden) return;
    state.ticking = true;
    try {
      await Promise.all([
        get("/metrics", true).then(onMetrics, () => null),
        get("/v1/usage/stats").then(onStats, (err) => {
          note("usage-note", err instanceof HttpError ? err.detail : "usage stats unreachable");
        }),
        refreshHealth(),
        get("/v1/diagnostics").then(onDiagnostics, (err) => {
          setText("kpi-active", "–");
          note(
            "conns-note",
            err instanceof HttpError && err.status === 403
              ? "Live connections are shown to loopback peers and admin keys only."
              : "Diagnostics unreachable.",
          );
        }),
      ]);
      setText("updated", new Date().toLocaleTimeString());
    } finally {
      state.ticking = false;
    }
  }

  function start() {
    setupKeyForm();
    restartStream();
    tick();
    setInterval(tick, TICK_MS);
    document.addEventListener("visibilitychange", tick);
    window.addEventListener("resize", () => {
      drawChart($("chart-traffic"), state.traffic);
      drawChart($("chart-latency"), state.latency);
    });
  }

  start();
})();
