"use strict";
// Every text from the server goes in through textContent: answers are never parsed as HTML.
const KEYS = {"1": "a", "a": "a", "2": "b", "b": "b", "3": "tie", "t": "tie", "4": "bad", "x": "bad", "s": "skip"};
let session = localStorage.getItem("camelid-arena-session");
let key = localStorage.getItem("camelid-arena-key") || "";
let current = null, busy = false;

class HTTPError extends Error {
  constructor(status, message) { super(status + " " + message); this.status = status; }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fill(box, texts, label) {
  box.replaceChildren(...texts.map((t, i) => {
    const d = el("div", "turn");
    if (texts.length > 1) d.append(el("div", "label", label + " " + (i + 1)));
    d.append(el("div", "text", t));
    return d;
  }));
}

function show(data) {
  current = data;
  const shown = Math.min(data.idx + 1, data.total);
  document.getElementById("progress").textContent =
    (data.done ? "done" : "item " + shown + " of " + data.total) + " · " + data.voted + " votes";
  document.querySelector("#bar div").style.width = (100 * data.idx / data.total) + "%";
  document.getElementById("item").style.display = data.done ? "none" : "";
  document.getElementById("done").style.display = data.done ? "block" : "none";
  setBusy(busy);
  if (data.done) return;
  document.documentElement.lang = data.lang || "en";
  fill(document.getElementById("question"), data.question, "Turn");
  fill(document.getElementById("left"), data.left, "Turn");
  fill(document.getElementById("right"), data.right, "Turn");
  window.scrollTo(0, 0);
}

function setBusy(b) {
  busy = b;
  const finished = !current || current.done;  // nothing left to vote on: the buttons stay off
  document.querySelectorAll("button[data-vote]").forEach(x => {
    x.disabled = b || finished;
    x.classList.toggle("finished", finished);
  });
}

async function api(path, body) {
  const headers = key ? {"Authorization": "Bearer " + key} : {};
  const init = body === undefined ? {headers} :
    {method: "POST", headers: {...headers, "Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, init);
  if (!r.ok) {
    let detail = "";
    try { detail = (await r.json()).detail; } catch (e) { detail = r.statusText; }
    throw new HTTPError(r.status, detail);
  }
  return r.json();
}

async function vote(v) {
  if (busy || !current || current.done) return;
  setBusy(true);
  const status = document.getElementById("status");
  status.textContent = "saving…";
  try {
    show(await api("/api/vote", {session: session, idx: current.idx, vote: v}));
    status.textContent = v === "skip" ? "skipped" : "saved";
  } catch (e) {
    status.textContent = "not saved: " + e.message;
  } finally {
    setBusy(false);
  }
}

document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const v = KEYS[e.key.toLowerCase()];
  if (v) { e.preventDefault(); vote(v); }
});
document.querySelectorAll("button[data-vote]").forEach(b => b.addEventListener("click", () => vote(b.dataset.vote)));

async function newSession() {
  session = (await api("/api/session", {})).session;
  localStorage.setItem("camelid-arena-session", session);
}

async function start() {
  document.getElementById("key-form").classList.remove("needed");
  try {
    if (!session) await newSession();
    try {
      show(await api("/api/next?session=" + encodeURIComponent(session)));
    } catch (e) {
      if (e.status !== 404) throw e;
      await newSession();  // a session this server never issued (another arena's, or a cleared database)
      show(await api("/api/next?session=" + encodeURIComponent(session)));
    }
    document.body.dataset.ready = "1";
  } catch (e) {
    if (e.status === 401) document.getElementById("key-form").classList.add("needed");
    document.getElementById("status").textContent = "error: " + e.message;
  }
}

document.getElementById("key-form").addEventListener("submit", ev => {
  ev.preventDefault();
  key = document.getElementById("key").value.trim();
  localStorage.setItem("camelid-arena-key", key);
  start();
});
setBusy(false);
start();
