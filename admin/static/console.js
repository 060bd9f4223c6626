// flashsale console: live updates over Server-Sent Events and the stock chart.
// No dependencies, no inline scripts (the Content-Security-Policy forbids them), text set
// with textContent only (never innerHTML), so nothing from the cluster can become markup.
"use strict";

(function () {
  const CHART_POINTS = 120;
  const COLORS = {
    available: "#2e7d32",
    reserved: "#ef8f00",
    sold: "#1565c0",
    orders: "rgba(96, 96, 96, 0.35)",
    grid: "#e3e3e3",
    text: "#555",
  };
  let history = [];
  let latest = null;

  // -- formatting (the same rules as admin/formatting.py) --------------------------------

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  function timeMs(ms, empty) {
    if (ms === null || ms === undefined) return empty || "";
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + "Z";
  }

  function durationS(s) {
    if (s === null || s === undefined) return "";
    s = Math.floor(s);
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
  }

  function saleState(p, nowMs) {
    if (p.closes_at_ms !== null && p.closes_at_ms !== undefined && nowMs >= p.closes_at_ms) return "closed";
    if (p.opens_at_ms !== null && p.opens_at_ms !== undefined && nowMs < p.opens_at_ms) return "scheduled";
    return "open";
  }

  function windowText(p) {
    return timeMs(p.opens_at_ms, "now") + " → " + timeMs(p.closes_at_ms, "no end");
  }

  function show(v) { return v === null || v === undefined ? "" : String(v); }

  // -- DOM helpers --------------------------------------------------------------------------

  function cell(key, text, cls) {
    const td = document.createElement("td");
    td.dataset.k = key;
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    const frag = document.createDocumentFragment();
    rows.forEach(function (tr) { frag.appendChild(tr); });
    if (rows.length === 0 && emptyText) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = columns;
      td.textContent = emptyText;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // -- tables -----------------------------------------------------------------------------

  function nodeRow(n) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    tr.dataset.up = n.up ? "true" : "false";
    tr.dataset.role = show(n.role);
    tr.append(
      cell("id", show(n.id)),
      cell("api", show(n.api)),
      cell("health", n.health || (n.up ? "up" : "down"), n.up ? "up" : "down"),
      cell("role", show(n.role)),
      cell("term", show(n.term)),
      cell("commit_index", show(n.commit_index)),
      cell("lag", show(n.lag)),
      cell("log_size", show(n.log_size)),
      cell("uptime", durationS(n.uptime_s)),
    );
    return tr;
  }

  function gatewayRow(g) {
    const tr = document.createElement("tr");
    tr.dataset.gateway = g.id;
    tr.dataset.up = g.up ? "true" : "false";
    tr.append(
      cell("id", show(g.id)),
      cell("listen", show(g.listen)),
      cell("health", g.up ? "up" : "down", g.up ? "up" : "down"),
      cell("requests_total", g.requests_total === null ? "" : g.requests_total.toFixed(0)),
      cell("rate_per_s", g.rate_per_s === null ? "" : g.rate_per_s.toFixed(1)),
    );
    return tr;
  }

  function productRow(p, nowMs) {
    const tr = document.createElement("tr");
    tr.dataset.product = p.product_id;
    const idCell = document.createElement("td");
    idCell.dataset.k = "product_id";
    const a = document.createElement("a");
    a.href = "/sale/products/" + encodeURIComponent(p.product_id);
    a.textContent = p.product_id;
    idCell.appendChild(a);
    const state = saleState(p, nowMs);
    tr.append(
      idCell,
      cell("name", show(p.name)),
      cell("price", show(p.price) + " " + show(p.currency)),
      cell("state", state, "state-" + state),
      cell("window", windowText(p)),
      cell("per_user_limit", p.per_user_limit === null ? "none" : show(p.per_user_limit)),
      cell("hold_ttl", durationS(p.hold_ttl_ms / 1000)),
      cell("total_stock", show(p.total_stock)),
      cell("available", show(p.available)),
      cell("reserved", show(p.reserved)),
      cell("sold", show(p.sold)),
    );
    return tr;
  }

  function renderCluster(s) {
    setText("leader", s.leader || "none");
    setText("updated", timeMs(s.at_ms));
    const nodes = document.querySelector("#nodes tbody");
    if (nodes) replaceRows(nodes, s.nodes.map(nodeRow), "", 9);
    const gws = document.querySelector("#gateways tbody");
    if (gws) replaceRows(gws, s.gateways.map(gatewayRow), "no gateways configured", 5);
  }

  function renderProducts(s) {
    const table = document.getElementById("products");
    if (!table) return;
    const only = table.dataset.only;
    const products = only ? s.products.filter(function (p) { return p.product_id === only; }) : s.products;
    if (only && products.length === 0) return; // keep the server's row until the cluster has it
    replaceRows(table.querySelector("tbody"), products.map(function (p) { return productRow(p, s.at_ms); }),
      "no products yet", 11);
    const select = document.getElementById("chart-product");
    if (select) {
      const known = new Set(Array.from(select.options).map(function (o) { return o.value; }));
      s.products.forEach(function (p) {
        if (!known.has(p.product_id)) {
          const o = document.createElement("option");
          o.value = p.product_id;
          o.textContent = p.product_id;
          select.appendChild(o);
        }
      });
    }
  }

  // -- bots and queue (the same cells as admin/bots_views.py) ------------------------------

  const DECISIONS = ["allowed", "limited", "challenged", "blocked", "queued"];
  const SETTINGS = ["challenge_difficulty", "admission_rate", "block_score"];
  const LISTS = ["block_ips", "allow_ips", "block_shoppers", "allow_shoppers"];

  function num(v) {
    if (typeof v !== "number") return "";
    return Number.isInteger(v) ? String(v) : String(Math.round(v * 1000) / 1000);
  }

  function text(v) { return typeof v === "number" ? num(v) : show(v); }

  function botsGatewayRow(g) {
    const tr = document.createElement("tr");
    tr.dataset.gateway = g.id;
    tr.dataset.up = g.up ? "true" : "false";
    const counts = g.counts || {};
    const settings = g.settings || {};
    const health = cell("health", g.up ? "up" : "down", g.up ? "up" : "down");
    if (g.error) health.title = g.error;
    const sync = cell("sync", show(g.sync));
    if (g.error) sync.title = g.error;
    tr.append(cell("id", show(g.id)), health, cell("defences", show(g.defences_text)),
      cell("redis", show(g.redis_text)));
    DECISIONS.forEach(function (d) { tr.appendChild(cell(d, num(counts[d]))); });
    SETTINGS.forEach(function (k) { tr.appendChild(cell(k, text(settings[k]))); });
    tr.appendChild(sync);
    return tr;
  }

  function spanCell(n) { const td = document.createElement("td"); td.colSpan = n; return td; }

  function botsTotalRow(t) {
    const tr = document.createElement("tr");
    tr.dataset.gateway = "total";
    tr.append(cell("id", "total"), cell("health", t.gateways_up + "/" + t.gateways + " up"), spanCell(2));
    DECISIONS.forEach(function (d) { tr.appendChild(cell(d, num(t.counts[d]))); });
    tr.appendChild(spanCell(4));
    return tr;
  }

  function queueRow(id, q) {
    q = q || {};
    const tr = document.createElement("tr");
    tr.dataset.gateway = id;
    tr.append(cell("id", id), cell("issued", num(q.issued)), cell("admitted", num(q.admitted)),
      cell("waiting", num(q.waiting)), cell("admission_rate", num(q.admission_rate)),
      cell("opens_at", typeof q.opens_at === "number" ? timeMs(Math.floor(q.opens_at * 1000)) : ""));
    return tr;
  }

  function reasonRow(r, ids) {
    const tr = document.createElement("tr");
    tr.dataset.reason = r.key;
    tr.append(cell("decision", show(r.decision)), cell("reason", show(r.reason)), cell("total", num(r.total)));
    ids.forEach(function (id) { tr.appendChild(cell("gw-" + id, num((r.by_gateway || {})[id] || 0))); });
    return tr;
  }

  function hidden(name, value) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    return input;
  }

  function removeForm(list, value) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/bots/lists";
    form.className = "inline remove-entry";
    const meta = document.querySelector('meta[name="csrf-token"]');
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "danger";
    button.textContent = "Remove";
    form.append(hidden("csrf_token", meta ? meta.content : ""), hidden("list", list),
      hidden("op", "remove"), hidden("value", value), button);
    return form;
  }

  function renderList(box, list, data) {
    const canRemove = document.getElementById("bot-list-add") !== null;
    const rows = data.entries.map(function (e) {
      const tr = document.createElement("tr");
      tr.dataset.value = e.value;
      const last = document.createElement("td");
      if (canRemove) last.appendChild(removeForm(list, e.value));
      tr.append(cell("value", e.value), cell("state", e.state), cell("on", e.on.join(", ")),
        cell("missing", e.missing.join(", ")), last);
      return tr;
    });
    replaceRows(box.querySelector("tbody"), rows, "empty", 5);
    const more = data.total > data.shown ? " (showing the first " + data.shown + ")" : "";
    const count = box.querySelector(".count");
    if (count) count.textContent = data.total + more;
  }

  function onBots(s) {
    latest = s;
    setText("bots-updated", timeMs(s.at_ms));
    setText("queue-shared", s.totals.queue_shared ? "shared through Redis" : "one per gateway");
    const ids = s.gateways.map(function (g) { return g.id; });
    const gws = document.querySelector("#bot-gateways tbody");
    if (gws) replaceRows(gws, s.gateways.map(botsGatewayRow), "no gateways configured", 14);
    const total = document.querySelector("#bot-gateways tfoot");
    if (total) total.replaceChildren(botsTotalRow(s.totals));
    const queue = document.querySelector("#bot-queue tbody");
    if (queue) replaceRows(queue, s.gateways.map(function (g) { return queueRow(g.id, g.queue); }), "", 6);
    const qTotal = document.querySelector("#bot-queue tfoot");
    if (qTotal) qTotal.replaceChildren(queueRow("total", s.totals.queue));
    const reasons = document.querySelector("#bot-reasons tbody");
    if (reasons) replaceRows(reasons, s.reasons.map(function (r) { return reasonRow(r, ids); }),
      "nothing counted yet", 3 + ids.length);
    SETTINGS.forEach(function (k) {
      const input = document.getElementById("f-" + k);
      if (input) input.placeholder = "now " + text(s.settings[k]);
    });
    LISTS.forEach(function (list) {
      const box = document.querySelector('.bot-list[data-list="' + list + '"]');
      if (box && s.lists[list]) renderList(box, list, s.lists[list]);
    });
    const down = s.gateways.filter(function (g) { return !g.up; }).length;
    setLive("live", down ? "live · " + down + " gateway(s) down" : "live");
  }

  // -- chart ------------------------------------------------------------------------------

  function chartProduct() {
    const select = document.getElementById("chart-product");
    if (select && select.value) return select.value;
    const canvas = document.getElementById("chart");
    return canvas ? canvas.dataset.product : "";
  }

  function drawChart() {
    const canvas = document.getElementById("chart");
    if (!canvas || !canvas.getContext) return;
    const pid = chartProduct();
    canvas.dataset.product = pid;
    const ratio = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || canvas.width;
    const cssH = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(cssW * ratio)) {
      canvas.width = Math.round(cssW * ratio);
      canvas.height = Math.round(cssH * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const left = 56, right = 48, top = 12, bottom = 24;
    const w = cssW - left - right, h = cssH - top - bottom;
    const points = history.slice(-CHART_POINTS);
    const nowMs = points.length ? points[points.length - 1].t_ms : Date.now();
    const startMs = nowMs - CHART_POINTS * 1000;
    const x = function (t) { return left + ((t - startMs) / (CHART_POINTS * 1000)) * w; };
    let maxUnits = 1, maxOrders = 1;
    points.forEach(function (pt) {
      const st = pt.stock[pid];
      // available + reserved + sold is the product's total stock: the natural top.
      if (st) { const total = (st[0] || 0) + (st[1] || 0) + (st[2] || 0); if (total > maxUnits) maxUnits = total; }
      if (pt.orders_per_s > maxOrders) maxOrders = pt.orders_per_s;
    });
    const y = function (v) { return top + h - (v / maxUnits) * h; };
    // grid and scales
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.text;
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const gy = top + (h * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, gy); ctx.lineTo(left + w, gy); ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(String(Math.round(maxUnits * (1 - i / 4))), left - 6, gy + 4);
      ctx.textAlign = "left";
      ctx.fillText((maxOrders * (1 - i / 4)).toFixed(maxOrders < 4 ? 1 : 0), left + w + 6, gy + 4);
    }
    ctx.textAlign = "center";
    ctx.fillText("-2 min", left, cssH - 6);
    ctx.fillText("-1 min", left + w / 2, cssH - 6);
    ctx.fillText("now", left + w, cssH - 6);
    // orders per second: bars on the right scale
    ctx.fillStyle = COLORS.orders;
    const barW = Math.max(1, w / CHART_POINTS - 1);
    points.forEach(function (pt) {
      if (pt.orders_per_s > 0) {
        const bh = (pt.orders_per_s / maxOrders) * h;
        ctx.fillRect(x(pt.t_ms) - barW, top + h - bh, barW, bh);
      }
    });
    // stock lines
    ["available", "reserved", "sold"].forEach(function (name, idx) {
      ctx.strokeStyle = COLORS[name];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      points.forEach(function (pt) {
        const st = pt.stock[pid];
        if (!st || st[idx] === null || st[idx] === undefined) { started = false; return; }
        if (started) ctx.lineTo(x(pt.t_ms), y(st[idx]));
        else { ctx.moveTo(x(pt.t_ms), y(st[idx])); started = true; }
      });
      ctx.stroke();
    });
    const last = points.length ? points[points.length - 1] : null;
    canvas.dataset.points = String(points.length);
    canvas.dataset.lastAvailable = last && last.stock[pid] ? String(last.stock[pid][0]) : "";
  }

  // -- live stream ------------------------------------------------------------------------

  function setLive(state, text) {
    const el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  function onSnapshot(s) {
    latest = s;
    if (s.history) history = s.history.slice();
    else if (s.sample) history.push(s.sample);
    if (history.length > CHART_POINTS) history = history.slice(-CHART_POINTS);
    renderCluster(s);
    renderProducts(s);
    setText("orders-per-s", s.sample ? String(s.sample.orders_per_s) : "0");
    drawChart();
    const down = s.nodes.filter(function (n) { return !n.up; }).length;
    setLive("live", down ? "live · " + down + " node(s) down" : "live");
  }

  function connect(url, handler) {
    const source = new EventSource(url);
    source.addEventListener("snapshot", function (e) { handler(JSON.parse(e.data)); });
    source.addEventListener("session-ended", function () {
      source.close();
      window.location.assign("/login");
    });
    source.addEventListener("error", function () {
      setLive("reconnecting", "reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // Refused outright (e.g. 401 after the session ended): ask whether we are signed in.
        fetch("/api/cluster", { credentials: "same-origin" }).then(function (r) {
          if (r.status === 401) window.location.assign("/login");
          else setTimeout(function () { connect(url, handler); }, 2000);
        }, function () { setTimeout(function () { connect(url, handler); }, 2000); });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const select = document.getElementById("chart-product");
    if (select) select.addEventListener("change", drawChart);
    window.addEventListener("resize", drawChart);
    const page = document.body.dataset.page;
    const live = ["cluster", "sale"].indexOf(page) >= 0;
    if (live && window.EventSource) connect("/api/live", onSnapshot);
    else if (page === "bots" && window.EventSource) connect("/api/bots/live", onBots);
    else setLive("idle", "");
    drawChart();
  });

  // For tests and the curious: the newest snapshot this page has received.
  window.flashsaleConsole = { latest: function () { return latest; } };
})();
