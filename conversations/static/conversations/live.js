/* The admin's live panel (conversations.admin.live): an EventSource on the page's staff stream.
 * Entries and thread events are appended as they come, each thread's state and usage kept on
 * its line, and the text of the step a model is writing shown from its deltas until the agent's
 * entry (or the thread's final event) replaces it. Every text is set with textContent. */
"use strict";
(function () {
  const MAX_ROWS = 200; // the oldest rows go past this many
  const RETRY_MS = 5000; // after a refusal (EventSource gives up on any status but 200)
  const FINAL = new Set(["completed", "failed", "stopped"]);

  function node(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined && text !== null) made.textContent = String(text);
    return made;
  }

  function short(id) {
    return id ? String(id).slice(0, 8) : "-";
  }

  function usageText(usage) {
    if (!usage) return "";
    const parts = [];
    if (usage.steps !== null && usage.steps !== undefined) {
      parts.push(usage.steps + (usage.steps === 1 ? " step" : " steps"));
    }
    if (usage.tokens_used) parts.push(usage.tokens_used + " tokens");
    if (usage.cost_usd && Number(usage.cost_usd) > 0) parts.push("$" + usage.cost_usd);
    if (usage.model_time_ms) parts.push("model " + usage.model_time_ms + " ms");
    return parts.join(" · ");
  }

  function start(panel) {
    const status = panel.querySelector("[data-live=status]");
    const threads = panel.querySelector("[data-live=threads]");
    const timeline = panel.querySelector("[data-live=timeline]");
    const empty = panel.querySelector("[data-live=empty]");
    const threadPage = panel.dataset.kind === "thread";
    const streaming = new Map(); // thread id -> {step, chars, row, body}
    const answered = new Map(); // thread id -> the last step whose text was replaced
    let lastId = panel.dataset.after || "";
    let source = null;

    function say(state, text) {
      panel.dataset.state = state;
      status.textContent = text;
    }

    function append(row) {
      if (empty) empty.hidden = true;
      timeline.appendChild(row);
      while (timeline.childElementCount > MAX_ROWS) timeline.firstElementChild.remove();
    }

    function row(kind, who, text, title) {
      const item = node("li", "live-" + kind);
      item.appendChild(node("span", "live-who", who));
      item.appendChild(node("span", "live-text", text));
      if (title) item.title = title;
      return item;
    }

    function threadLine(id) {
      for (const line of threads.children) {
        if (line.dataset.thread === id) return line;
      }
      const line = node("li");
      line.dataset.thread = id;
      threads.appendChild(line);
      return line;
    }

    function onEntry(message) {
      const entry = JSON.parse(message.data);
      const pending = entry.thread_id && streaming.get(entry.thread_id);
      if (entry.sender === "agent" && pending) {
        pending.row.remove();
        streaming.delete(entry.thread_id);
        answered.set(entry.thread_id, pending.step);
      }
      append(row("entry", entry.sender, entry.content, "seq " + entry.seq + " · " + entry.created_at));
    }

    function onThread(message) {
      const event = JSON.parse(message.data);
      const who = "thread " + short(event.thread_id);
      if (event.type === "step") {
        const step = event.step || {};
        append(row("event", who, "step " + (step.n !== undefined ? step.n : "") + " done", event.at));
        return;
      }
      // A new run of the thread may number its steps from the start again.
      if (event.type === "claimed" || event.type === "resumed") answered.delete(event.thread_id);
      const changed = event.type !== event.state; // claimed, resumed, requeued: say so
      threadLine(event.thread_id).replaceChildren(
        document.createTextNode(who + " · "),
        node("span", "live-state", event.state),
        document.createTextNode(changed ? " (" + event.type + ")" : ""),
        node("span", "live-usage", usageText(event.usage))
      );
      const change = changed ? event.type + " → " + event.state : event.type;
      append(row("event", who, change, event.at));
      if (FINAL.has(event.type)) finish(event);
    }

    function finish(event) {
      const pending = streaming.get(event.thread_id);
      const response = event.outcome && event.outcome.response;
      if (pending && response && !threadPage) return; // its agent entry comes next
      if (pending) {
        // The thread page gets no entries: the outcome's response is the final text.
        pending.row.className = response ? "live-entry" : "live-event";
        pending.row.firstChild.textContent = response ? "response" : "unfinished";
        if (response) pending.body.textContent = response;
        append(pending.row); // after the events that ended it
        answered.set(event.thread_id, pending.step);
        streaming.delete(event.thread_id);
      }
      if (threadPage) {
        // Its stream has nothing more to send: no reconnecting every second.
        source.close();
        say("ended", "ended");
      }
    }

    function onDelta(message) {
      const delta = JSON.parse(message.data);
      // A delta that comes after its text was replaced is not shown again.
      if (delta.step <= answered.get(delta.thread_id)) return;
      let text = streaming.get(delta.thread_id);
      if (!text || text.step !== delta.step) {
        if (text) text.row.remove();
        const item = row("streaming", "agent · step " + delta.step, "");
        text = { step: delta.step, chars: [], row: item, body: item.lastChild };
        streaming.set(delta.thread_id, text);
        append(item);
      }
      // Offsets count code points, as Array.from does (a string's length counts UTF-16 units).
      text.chars = text.chars.slice(0, delta.offset).concat(Array.from(delta.text));
      text.body.textContent = text.chars.join("");
    }

    function remember(message) {
      if (message.lastEventId) lastId = message.lastEventId;
    }

    function connect() {
      const url = panel.dataset.eventsUrl + (lastId ? "?after=" + encodeURIComponent(lastId) : "");
      source = new EventSource(url);
      source.onopen = function () {
        say("live", "live");
      };
      source.onerror = function () {
        if (source.readyState === EventSource.CONNECTING) {
          say("reconnecting", "reconnecting…");
          return;
        }
        // Refused (signed out, too many streams): it will not retry by itself.
        source.close();
        say("reconnecting", "disconnected; retrying in " + RETRY_MS / 1000 + " s…");
        window.setTimeout(connect, RETRY_MS);
      };
      source.addEventListener("entry", function (message) {
        remember(message);
        onEntry(message);
      });
      source.addEventListener("thread", function (message) {
        remember(message);
        onThread(message);
      });
      source.addEventListener("delta", onDelta);
    }

    connect();
  }

  function startAll() {
    document.querySelectorAll(".live-panel[data-events-url]").forEach(start);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startAll);
  } else {
    startAll();
  }
})();
