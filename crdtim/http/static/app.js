// The crdtim page: the conversation list, one conversation's fields, pin/mute/read, its
// message history with a version switcher and a box to post, kept live by the change feed.
// Text from the server is only ever set with textContent (no HTML parsing of data), so a
// title, preview or message cannot inject markup.
"use strict";

const HISTORY_PAGE = 30;
const state = {
  items: [], selected: null, position: null,
  history: { cid: null, items: [], cursor: null, hasMore: false },  // items newest first
  pending: null,  // {text, id}: a post not yet answered, retried with the same id
};
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
    li.addEventListener("click", () => {
      state.selected = c.id;
      renderList();
      renderDetail(c);
      serially(() => openHistory(c.id));
    });
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
    const shown = name === "last_at" && value ? new Date(value).toLocaleString()
      : value !== null && typeof value === "object" ? JSON.stringify(value) : value;
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

// -- the message history -------------------------------------------------------------------

// History reads and writes run one after another, so that answers land in order.
let queue = Promise.resolve();
function serially(task) {
  queue = queue.then(task).catch((e) => { $("error").textContent = e.message; });
  return queue;
}

function messagePath(mid, suffix) {
  return "/api/im/messages/" + encodeURIComponent(mid) + (suffix || "");
}

function inConversation(cid) { return "?conversation_id=" + encodeURIComponent(cid); }

async function fetchHistory(cid, limit, cursor) {
  const q = "/api/im/messages" + inConversation(cid) + "&limit=" + limit +
    (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
  return api("GET", q);
}

async function openHistory(cid) {
  state.history = { cid, items: [], cursor: null, hasMore: false };
  renderHistory();
  const page = await fetchHistory(cid, HISTORY_PAGE, null);
  if (state.history.cid !== cid) return;
  state.history = { cid, items: page.messages, cursor: page.cursor, hasMore: page.has_more };
  renderHistory();
}

// The newest messages again, as many as are shown: after a new message or another version
// became visible, the path itself may have changed.
async function reloadHistory() {
  const cid = state.history.cid;
  if (!cid) return;
  const limit = Math.min(10000, Math.max(HISTORY_PAGE, state.history.items.length));
  const page = await fetchHistory(cid, limit, null);
  if (state.history.cid !== cid) return;
  state.history = { cid, items: page.messages, cursor: page.cursor, hasMore: page.has_more };
  renderHistory();
}

async function loadOlder() {
  const h = state.history;
  if (!h.cid || !h.hasMore) return;
  const page = await fetchHistory(h.cid, HISTORY_PAGE, h.cursor);
  if (state.history !== h) return;
  h.items.push(...page.messages);
  h.cursor = page.cursor;
  h.hasMore = page.has_more;
  renderHistory();
}

// The change feed named these messages of the open conversation: those shown are fetched
// again one by one (a streamed reply's appends), anything else reloads the page.
async function refreshMessages(ids) {
  const h = state.history;
  const shown = new Map(h.items.map((m, i) => [m.id, i]));
  if (!ids.every((id) => shown.has(id))) return reloadHistory();
  for (const id of ids) {
    const m = await api("GET", messagePath(id) + inConversation(h.cid));
    if (state.history !== h) return;
    h.items[shown.get(id)] = m;
  }
  renderHistory();
}

function renderHistory() {
  const h = state.history;
  const list = $("messages");
  list.replaceChildren(...h.items.slice().reverse().map(renderMessage));
  $("older").hidden = !h.hasMore;
}

function renderMessage(m) {
  const li = el("li", "message" + (m.deleted ? " deleted" : ""));
  li.dataset.id = m.id;
  li.dataset.role = m.role;
  const who = el("div", "who");
  who.append(el("span", "role", m.role));
  if (m.author) who.append(el("span", "author", m.author));
  if (m.edited !== null) who.append(el("span", "note", "(edited)"));
  if (m.deleted) who.append(el("span", "note", "(deleted)"));
  if (m.versions > 1) who.append(switcher(m));
  li.append(who, el("div", "body", m.deleted ? "" : m.text));
  return li;
}

function switcher(m) {
  const box = el("span", "switcher");
  const previous = el("button", "previous", "<");
  const next = el("button", "next", ">");
  previous.type = next.type = "button";
  previous.title = "previous version";
  next.title = "next version";
  previous.disabled = m.version === 0;
  next.disabled = m.version === m.versions - 1;
  previous.addEventListener("click", () => switchVersion(m, -1));
  next.addEventListener("click", () => switchVersion(m, 1));
  box.append(previous, el("span", "position", (m.version + 1) + "/" + m.versions), next);
  return box;
}

function switchVersion(m, step) {
  return serially(async () => {
    const cid = state.history.cid;
    const { versions } = await api("GET", messagePath(m.id, "/versions") + inConversation(cid));
    const sibling = versions[versions.findIndex((v) => v.id === m.id) + step];
    if (!sibling) return;
    await api("POST", messagePath(sibling.id, "/switch"), { conversation_id: cid });
    await reloadHistory();
  });
}

function newMessageId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

function postMessage(event) {
  event.preventDefault();
  const text = $("post-text").value;
  const cid = state.history.cid;
  if (!text.trim() || !cid) return;
  // A retry of a post whose answer was lost reuses its id: the server makes it one message.
  if (!state.pending || state.pending.text !== text) state.pending = { text, id: newMessageId() };
  const id = state.pending.id;
  serially(async () => {
    await api("POST", "/api/im/messages", { conversation_id: cid, text, id });
    state.pending = null;
    $("post-text").value = "";
    $("error").textContent = "";
    await reloadHistory();
  });
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
      serially(reloadHistory);  // what changed while it was not following
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
          let id = null, kind = null, data = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
          }
          if (id !== null) state.position = Number(id);
          if (kind === "change" || kind === "reset") await loadList();
          if (kind === "reset") serially(reloadHistory);
          if (kind === "change") {
            const open = data.conversations.find((c) => c.id === state.history.cid);
            if (open && open.messages.length) serially(() => refreshMessages(open.messages));
          }
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
  $("older").addEventListener("click", () => serially(loadOlder));
  $("post-form").addEventListener("submit", postMessage);
  follow();
});
