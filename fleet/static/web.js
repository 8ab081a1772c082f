// The console's only script (served by the fleet manager, no CDN, no library).
// Live inbox: <tbody data-live-src="/alerts/stream?since=..."> receives server-sent events
// "alert" with one row each, and puts the row on top without reloading the page.
"use strict";
(function () {
  const body = document.querySelector("tbody[data-live-src]");
  if (!body || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const count = document.getElementById("alerts-total");
  const labels = JSON.parse(body.dataset.labels || "{}");
  const source = new EventSource(body.dataset.liveSrc);

  function cell(label, content, className) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (className) td.className = className;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    return td;
  }

  source.addEventListener("open", function () {
    if (status) status.textContent = labels.live || "";
  });
  source.addEventListener("error", function () {
    if (status) status.textContent = labels.reconnecting || "";
  });
  source.addEventListener("alert", function (event) {
    const row = JSON.parse(event.data);
    if (document.getElementById("alert-" + row.alert_id)) return;
    const empty = document.getElementById("inbox-empty");
    if (empty) empty.remove();
    const tr = document.createElement("tr");
    tr.id = "alert-" + row.alert_id;
    tr.className = "new-arrival";
    const link = document.createElement("a");
    link.href = row.href;
    link.textContent = row.title;
    tr.appendChild(cell(labels.kind, link));
    tr.appendChild(cell(labels.severity, row.severity_label, "sev-" + row.severity));
    tr.appendChild(cell(labels.flat, row.place));
    tr.appendChild(cell(labels.raised_at, row.raised_at));
    tr.appendChild(cell(labels.status, row.status));
    body.insertBefore(tr, body.firstChild);
    if (count) count.textContent = String(Number(count.textContent || "0") + 1);
    const announce = document.getElementById("live-announce");
    if (announce) announce.textContent = (labels.arrived || "") + row.title + " " + row.place;
  });
})();

// Enrollment page: <strong data-status-src="/install/gateways/{id}/status"> polls until the
// new gateway is online.
(function () {
  const el = document.querySelector("[data-status-src]");
  if (!el) return;
  const lastSeen = document.getElementById("gateway-last-seen");
  function poll() {
    fetch(el.dataset.statusSrc, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && body.online) {
          el.textContent = el.dataset.online;
          el.className = "online";
          if (lastSeen && body.last_seen) lastSeen.textContent = body.last_seen;
          return;
        }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  poll();
})();

// Gateway page and enrollment page: <table data-live-devices="/gateways/{id}/live"> polls the
// gateway's live state (each device's answer, config versions) and updates the rows in place.
(function () {
  const table = document.querySelector("table[data-live-devices]");
  if (!table) return;
  function text(id, value) {
    const el = document.getElementById(id);
    if (el && value !== undefined) el.textContent = value === null ? "-" : String(value);
    return el;
  }
  function apply(body) {
    const byId = {};
    body.devices.forEach(function (d) { byId[d.device_id] = d; });
    table.querySelectorAll("tr[data-device]").forEach(function (tr) {
      const d = byId[tr.dataset.device];
      if (!d) return;
      const state = tr.querySelector(".dev-state");
      if (state && state.dataset.state !== d.state + (d.fault || "")) {
        state.dataset.state = d.state + (d.fault || "");
        state.className = "dev-state state-" + d.state;
        state.textContent = d.state_label + (d.fault ? " · " + d.fault : "");
      }
      const seen = tr.querySelector(".dev-seen");
      if (seen) seen.textContent = d.last_seen || "-";
    });
    const online = document.getElementById("gw-online");
    if (online) {
      online.textContent = body.online ? online.dataset.online : online.dataset.offline;
      online.className = body.online ? "online" : "offline";
    }
    text("gw-last-seen", body.last_seen);
    text("gw-last-heartbeat", body.last_heartbeat);
    text("gw-backlog", body.backlog);
    text("desired-version", body.config.desired);
    const applied = text("applied-version", body.config.applied);
    if (applied) applied.className = body.config.in_step ? "online" : "";
    const note = document.getElementById("config-note");
    if (note && body.config.desired !== null) {
      note.textContent = body.config.in_step ? note.dataset.inStep : note.dataset.pending;
    }
  }
  function poll() {
    fetch(table.dataset.liveDevices, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body) apply(body);
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  poll();
})();
