// camelid chat page: streams /v1/chat/completions (fetch + SSE parsing), multi-turn, no dependencies.
// Model text is only ever written with textContent / text nodes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], model: null, apiKey: "", controller: null, maxTokens: null };
const NOTES = { length: "cut off: the answer reached max tokens", stopped: "stopped before the end" };

function setBusy(busy) {
  document.body.dataset.state = busy ? "streaming" : "idle";
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

function status(text) { $("status").textContent = text || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// Plain text with ``` fences shown as code blocks; built from text nodes only.
function render(el, text) {
  const nodes = [];
  text.split("```").forEach((part, i) => {
    if (i % 2 === 0) { if (part) nodes.push(document.createTextNode(part)); return; }
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    code.textContent = part.replace(/^[\w+-]*\n/, "");
    pre.appendChild(code);
    nodes.push(pre);
  });
  el.querySelector(".body").replaceChildren(...nodes);
}

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.dataset.role = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "You" : role === "assistant" ? (state.model || "assistant") : "error";
  const body = document.createElement("div");
  body.className = "body";
  el.append(label, body);
  render(el, text);
  $("log").appendChild(el);
  $("log").scrollTop = $("log").scrollHeight;
  return el;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return `HTTP ${resp.status}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

// The largest max_tokens the server accepts (its model's context), from /health.
async function loadLimits() {
  try {
    const resp = await fetch("/health");
    const body = await resp.json();
    if (Number.isInteger(body.max_tokens) && body.max_tokens > 0) {
      state.maxTokens = body.max_tokens;
      $("max-tokens").max = String(body.max_tokens);
      maxTokens();
    }
  } catch (e) { /* the model line says the server is unreachable */ }
}

// The max-tokens box as a whole number the server accepts (clamped into [1, the server's limit]).
function maxTokens() {
  const box = $("max-tokens");
  let n = Math.round(Number(box.value));
  if (!Number.isFinite(n) || n < 1) n = 1;
  if (state.maxTokens && n > state.maxTokens) n = state.maxTokens;
  if (String(n) !== box.value) box.value = String(n);
  return n;
}

// A visible note on an answer that did not end on its own: cut at max tokens, or stopped by the user.
function mark(el, reason) {
  el.dataset.finish = reason;
  const note = document.createElement("span");
  note.className = "note";
  note.dataset.testid = "finish-note";
  note.textContent = NOTES[reason];
  el.appendChild(note);
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (resp.status === 401) {
      $("key-label").hidden = false;
      $("model-name").textContent = "(API key needed)";
      return;
    }
    const body = await resp.json();
    state.model = body.data[0].id;
    $("model-name").textContent = state.model;
  } catch (e) {
    $("model-name").textContent = "(server unreachable)";
  }
}

// Yields the JSON objects of an SSE body ("data: {...}" events, ended by "data: [DONE]").
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const ev of events) {
      const data = ev.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(text) {
  if (!state.model) await loadModel();
  state.messages.push({ role: "user", content: text });
  const userEl = bubble("user", text);
  const el = bubble("assistant", "");
  el.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  status("");
  let answer = "";
  let failed = null;
  let finish = null;
  const t0 = performance.now();
  try {
    const body = {
      model: state.model || undefined,
      messages: state.messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number($("temperature").value),
      max_tokens: maxTokens(),
    };
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (resp.status === 401) $("key-label").hidden = false;
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const chunk of sseEvents(resp)) {
      if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (choice && choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
        answer += choice.delta.content;
        render(el, answer);
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (chunk.usage) {
        const secs = (performance.now() - t0) / 1000;
        status(`${chunk.usage.completion_tokens} tokens in ${secs.toFixed(1)} s`);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") failed = e.message || String(e);
  } finally {
    el.classList.remove("streaming");
    if (state.controller === controller) state.controller = null;
    setBusy(false);
  }
  if (controller.signal.aborted && !state.messages.length) return;  // reset while streaming
  if (failed && !answer) {
    // the turn did not happen: its message leaves the screen as it left the conversation, and goes back into
    // the input box to be sent again
    el.remove();
    userEl.remove();
    state.messages.pop();
    if (!$("input").value) $("input").value = text;
    bubble("error", failed);
    return;
  }
  if (controller.signal.aborted) mark(el, "stopped");
  else if (finish === "length") mark(el, "length");
  if (failed) bubble("error", failed);
  state.messages.push({ role: "assistant", content: answer });
}

function reset() {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("log").replaceChildren();
  status("");
  $("input").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  setBusy(false);
  loadModel();
  loadLimits();
  $("max-tokens").addEventListener("change", maxTokens);
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("input").value;
    if (!text.trim() || state.controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {  // isComposing: Korean IME input
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("reset").addEventListener("click", reset);
  $("settings").addEventListener("submit", (ev) => { ev.preventDefault(); loadModel(); });
  $("api-key").addEventListener("change", loadModel);
});
