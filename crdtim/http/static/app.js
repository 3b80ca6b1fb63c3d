// The crdtim page: the conversation list, one conversation's fields, pin/mute/read, kept
// live by the change feed. Text from the server is only ever set with textContent (no
// HTML parsing of data), so a title or preview cannot inject markup.
"use strict";

const state = { items: [], selected: null, position: null };
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("crdtim-token") || ""; }

function headers(extra) {
  const h = Object.assign({ "Accept": "application/json" }, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const answer = await response.json();
  if (answer.status_code !== 0) throw new Error(answer.error || ("HTTP " + response.status));
  return answer.data;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function loadList() {
  const items = [];
  let cursor = null;
  do {  // every page: the list is small enough for a page of 500 at a time
    const q = "/api/im/conversations?limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    const page = await api("GET", q);
    items.push(...page.conversations);
    cursor = page.has_more ? page.cursor : null;
  } while (cursor);
  state.items = items;
  renderList();
  if (state.selected) renderDetail(items.find((c) => c.id === state.selected));
}

function renderList() {
  const list = $("list");
  list.replaceChildren();
  for (const c of state.items) {
    const li = el("li");
    li.dataset.id = c.id;
    if (c.id === state.selected) li.classList.add("selected");
    if (c.pinned) li.append(el("span", "mark pinned", "pinned"));
    const text = el("div", "text");
    text.append(el("div", "name", c.title || c.id), el("div", "preview", c.last_preview));
    li.append(text);
    if (c.muted) li.append(el("span", "mark muted", "muted"));
    if (c.extra && c.extra.archived) li.append(el("span", "mark archived", "archived"));
    if (c.unread > 0) li.append(el("span", "badge", c.unread));
    li.addEventListener("click", () => { state.selected = c.id; renderList(); renderDetail(c); });
    list.append(li);
  }
}

function renderDetail(c) {
  const detail = $("detail");
  if (!c) { detail.hidden = true; return; }
  detail.hidden = false;
  $("detail-title").textContent = c.title || c.id;
  const dl = $("detail-fields");
  dl.replaceChildren();
  const fields = Object.assign({}, c, c.extra || {});
  delete fields.extra;
  for (const [name, value] of Object.entries(fields)) {
    const shown = name === "last_at" && value ? new Date(value).toLocaleString() : value;
    dl.append(el("dt", null, name), el("dd", null, shown));
  }
  $("pin").textContent = c.pinned ? "Unpin" : "Pin";
  $("mute").textContent = c.muted ? "Unmute" : "Mute";
  $("read").disabled = c.unread === 0;
  $("error").textContent = "";
}

async function patch(change) {
  const c = state.items.find((x) => x.id === state.selected);
  if (!c) return;
  try {
    await api("PATCH", "/api/im/conversations/" + encodeURIComponent(c.id), change(c));
    await loadList();
  } catch (e) {
    $("error").textContent = e.message;
  }
}

// The change feed, read with fetch (EventSource cannot send a token): each event names
// what changed; the page refetches the list, and everything on a reset.
async function follow() {
  for (;;) {
    try {
      const h = headers({ "Accept": "text/event-stream" });
      if (state.position !== null) h["Last-Event-ID"] = String(state.position);
      const since = state.position === null ? "now" : String(state.position);
      const response = await fetch("/api/im/changes?feed=eventsource&heartbeat=15000&since=" + since, { headers: h });
      if (!response.ok) throw new Error((await response.json()).error);
      $("status").textContent = "live";
      $("status").classList.add("live");
      await loadList();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = null, kind = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) kind = line.slice(7);
          }
          if (id !== null) state.position = Number(id);
          if (kind === "change" || kind === "reset") await loadList();
        }
      }
    } catch (e) {
      $("status").textContent = "offline: " + e.message;
    }
    $("status").classList.remove("live");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token").addEventListener("change", (e) => { sessionStorage.setItem("crdtim-token", e.target.value); loadList().catch(() => {}); });
  $("pin").addEventListener("click", () => patch((c) => ({ pinned: !c.pinned })));
  $("mute").addEventListener("click", () => patch((c) => ({ muted: !c.muted })));
  $("read").addEventListener("click", () => patch((c) => ({ read_seq: c.last_seq })));
  follow();
});
