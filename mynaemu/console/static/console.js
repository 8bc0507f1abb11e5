// The trainer's console: live card panels (server-sent events), actions, scenario steps.
// No framework, no CDN: works offline. Every request carries the token (in the path; POSTs also
// in the X-Console-Token header, which other sites cannot set).
"use strict";
(function () {
  const base = document.body.dataset.base;
  const token = base.split("/")[2];
  const T = JSON.parse(document.getElementById("texts").textContent);
  const seen = {}; // card index -> highest APDU seq shown
  window.__apduSeen = []; // {seq, server, dom}: what the latency benchmark reads
  window.__updates = 0;

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const fill = (key, values) => (T[key] || key).replace(/\{(\w+)\}/g, (_, k) => esc(values[k]));

  function notice(text, bad) {
    const el = document.getElementById("notice");
    el.textContent = text;
    el.className = bad ? "bad" : "good";
  }

  async function post(path, body) {
    const r = await fetch(base + path, {method: "POST", headers: {"Content-Type": "application/json", "X-Console-Token": token},
                                        body: JSON.stringify(body || {}), credentials: "same-origin"});
    try { return await r.json(); } catch (e) { return {ok: false, error: `HTTP ${r.status}`}; }
  }

  function renderCard(state) {
    const panel = document.querySelector(`section.card[data-index="${state.index}"]`);
    if (!panel) return;
    const field = (name) => panel.querySelector(`[data-field="${name}"]`);
    const presence = field("presence");
    presence.textContent = state.inserted === false ? T.removed : (state.inserted ? T.inserted : "");
    presence.dataset.state = state.inserted === false ? "removed" : "inserted";
    const keys = Object.entries(state.keys || {}).map(([k, v]) => {
      const segs = Array.from({length: v.limit}, (_, i) => `<span class="seg ${i < v.tries_left ? "on" : "off"}"></span>`).join("");
      return `<div class="key${v.tries_left === 0 ? " locked" : ""}" data-key="${esc(k)}" data-tries="${v.tries_left}" data-limit="${v.limit}">
        <span class="name">${esc(k)}</span><span class="bar" title="${esc(v.label)}">${segs}</span>
        <span class="count">${v.tries_left}/${v.limit}</span>${v.tries_left === 0 ? `<span class="lock">${esc(T.locked)}</span>` : ""}</div>`;
    }).join("");
    field("keys").innerHTML = keys;
    field("ap").textContent = `${T.ap}: ${state.ap || T.none}`;
    field("verified").textContent = `${T.verified}: ${(state.verified || []).join(", ") || T.none}`;
    const certs = state.certificates || {state: "unknown"};
    field("certs").textContent = T["cert_" + certs.state] || certs.state;
    field("certs").dataset.state = certs.state;
    field("certs-detail").textContent = certs.detail || "";
    panel.querySelector(".guesses-on").hidden = !state.show_guesses;
    const toggle = panel.querySelector(".guesses-toggle");
    if (toggle) {
      toggle.dataset.state = state.show_guesses ? "on" : "off";
      toggle.textContent = state.show_guesses ? toggle.dataset.offText : toggle.dataset.onText;
    }
    const rows = (state.apdus || []).map((a) => `<tr data-seq="${a.seq}" data-sw="${esc(a.sw)}"><td>${esc(a.command)}</td>
      <td>${esc(a.ap || "")}</td><td>${esc(a.ef || "")}</td><td class="hex">${esc(a.plain || a.cmd)}</td>
      <td class="sw">${esc(a.sw)}</td><td>${esc(a.meaning)}</td></tr>`).join("");
    field("apdus").innerHTML = rows || `<tr><td colspan="6">${esc(state.attached ? T.no_log_attached : T.no_apdus)}</td></tr>`;
    const now = performance.timeOrigin + performance.now();
    const last = seen[state.index] || 0;
    for (const a of (state.apdus || []).slice().reverse()) {
      if (a.seq > last) window.__apduSeen.push({seq: a.seq, server: a.ts * 1000, dom: now});
    }
    if (state.apdus && state.apdus.length) seen[state.index] = Math.max(last, state.apdus[0].seq);
    document.getElementById("guesses-banner").hidden = !document.querySelector('.guesses-on:not([hidden])');
    window.__updates += 1;
  }

  function renderAll(cards) { for (const c of cards) renderCard(c); }

  function connect() {
    const source = new EventSource(base + "events");
    source.onmessage = (e) => renderAll(JSON.parse(e.data).cards);
    source.onopen = () => document.body.dataset.live = "yes";
  }

  async function onAction(button) {
    const panel = button.closest("section.card");
    const index = panel.dataset.index;
    const input = (name) => panel.querySelector(`[data-input="${name}"]`);
    const op = button.dataset.action;
    const body = {op};
    if (["unblock", "reset-pin", "kiosk-reset", "set-tries", "block"].includes(op)) body.key = input("key").value;
    if (op === "set-tries") body.tries = parseInt(input("tries").value, 10);
    if (op === "reset-pin" || op === "kiosk-reset") body.new = input("new").value;
    if (op === "kiosk-reset") body.other = input("other").value;
    const answer = await post(`api/cards/${index}/action`, body);
    if (op === "reset-pin" || op === "kiosk-reset") { input("new").value = ""; input("other").value = ""; }
    notice(answer.ok ? `${op}: ${T.done}` : `${op}: ${answer.error}`, !answer.ok);
  }

  function renderResult(li, result) {
    const out = li.querySelector(".result");
    let html = "";
    if (result.error) html += `<p class="error">${esc(T.unavailable)}: ${esc(result.error)}</p>`;
    html += (result.notes || []).map((n) => `<p class="note" data-note="${esc(n.id)}">${fill("n_" + n.id, n)}</p>`).join("");
    if (result.exchanges && result.exchanges.length) {
      html += `<table class="exchanges">` + result.exchanges.map((x) => `<tr data-sw="${esc(x.sw)}"><td>${esc(x.what)}</td>
        <td class="hex">${esc(x.plain || x.cmd)}</td><td class="sw">${esc(x.sw)}</td><td>${esc(x.meaning)}</td></tr>`).join("") + `</table>`;
    }
    if (result.matrix) html += renderMatrix(result.matrix);
    out.innerHTML = html;
    li.dataset.done = String((parseInt(li.dataset.done || "0", 10)) + 1);
  }

  function renderMatrix(m) {
    const head = m.columns.map((c) => `<th data-col="${esc(c.id)}" title="${esc(c.label)}">${esc(c.ap)}<br>${esc(c.fid)}<br><small>${esc(c.label)}</small></th>`).join("");
    const rows = m.rows.map((r) => {
      const label = `<th class="rowhead">${esc(T["row_" + r.id] || r.id)}</th>`;
      if (r.unavailable) return `<tr data-row="${esc(r.id)}" class="unavailable">${label}<td colspan="${m.columns.length}">${esc(T.pin_unknown)}</td></tr>`;
      const cells = m.columns.map((c) => {
        const status = r.cells[c.id];
        const yes = status === "9000";
        return `<td data-row="${esc(r.id)}" data-col="${esc(c.id)}" data-sw="${esc(status)}" class="${yes ? "yes" : "no"}">${yes ? "✔ " + esc(T.readable) : "✘"}</td>`;
      }).join("");
      return `<tr data-row="${esc(r.id)}">${label}${cells}</tr>`;
    }).join("");
    return `<div class="matrix-wrap"><table class="matrix"><thead><tr><th></th>${head}</tr></thead><tbody>${rows}</tbody></table></div>`;
  }

  async function onStep(button) {
    const section = button.closest("section.scenario");
    const li = button.closest("li.step");
    button.disabled = true;
    li.dataset.running = "yes";
    try {
      const result = await post(`api/scenario/${section.dataset.scenario}/${section.dataset.card}/${button.dataset.step}`);
      renderResult(li, result);
    } finally {
      button.disabled = false;
      delete li.dataset.running;
    }
  }

  document.addEventListener("click", async (e) => {
    const target = e.target.closest("button");
    if (!target) return;
    if (target.dataset.action) return onAction(target);
    if (target.classList.contains("run-step")) return onStep(target);
    if (target.dataset.guesses) {
      const panel = target.closest("section.card");
      const answer = await post(`api/cards/${panel.dataset.index}/guesses`, {on: target.dataset.state !== "on"});
      if (!answer.ok) notice(answer.error, true);
      return;
    }
    if (target.id === "class-reset") {
      const answer = await post("api/class-reset");
      notice(answer.ok ? T.class_done : answer.cards.flatMap((c) => c.errors).join("; "), !answer.ok);
    }
  });

  renderAll(JSON.parse(document.getElementById("initial-state").textContent));
  connect();
})();
