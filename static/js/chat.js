// The chat page: wires the connection, the timeline, the composer, presence and
// typing for the one room named in the URL.

import { MAX_TEXT_CHARS, chatUrl, findClient, loadRecentRooms, rememberRoom, roomProblem } from "./api.js";
import { Connection } from "./connection.js";
import { MessageList } from "./message-list.js";
import { Outbox } from "./outbox.js";
import { avatar, listNames, newCid } from "./text.js";

const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 3000;
const HISTORY_PAGE = 50;
const NEAR_BOTTOM_PX = 80;
const LOAD_OLDER_PX = 120;
const WARN_AT_CHARS = MAX_TEXT_CHARS - 200;

const $ = (id) => document.getElementById(id);

const el = {
  app: $("app"),
  sidebarOpen: $("sidebar-open"),
  sidebarClose: $("sidebar-close"),
  scrim: $("scrim"),
  meAvatar: $("me-avatar"),
  roomList: $("room-list"),
  joinForm: $("join-room-form"),
  joinInput: $("join-room-input"),
  joinError: $("join-room-error"),
  people: $("people"),
  onlineCount: $("online-count"),
  onlineSummary: $("online-summary"),
  status: $("status"),
  statusText: $("status-text"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerRetry: $("banner-retry"),
  timeline: $("timeline"),
  historyStatus: $("history-status"),
  messages: $("messages"),
  empty: $("empty-state"),
  newMessages: $("new-messages"),
  announcer: $("announcer"),
  typing: $("typing"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("composer-send"),
  feedback: $("composer-feedback"),
  count: $("composer-count"),
  gate: $("gate"),
  gateTitle: $("gate-title"),
  gateText: $("gate-text"),
};

const pageUser = document.body.dataset.username || "";
const room = document.body.dataset.room || "general";

/** Everything this page knows that is not in the DOM. */
const state = {
  me: pageUser,
  joined: false, // joined the room on the current connection
  hasMore: false,
  loadingOlder: false,
  loadingTimer: 0,
  earlyMessages: [], // live messages that arrived before this connection's `joined`
  everJoined: false,
  unseen: 0,
  typers: new Map(), // user -> timeout id
  atBottom: true,
  lastTypingSent: 0,
  typingTimer: 0,
  users: [],
  feedbackTimer: 0,
  feedbackFromInput: false,
  countdownTimer: 0,
};

let connection = null;

const outbox = new Outbox(pageUser, room);

const list = new MessageList(el.messages, {
  me: pageUser,
  onRetry: (cid) => retry(cid),
  onDiscard: (cid) => {
    outbox.remove(cid);
    list.discard(cid);
    updateEmpty();
  },
  onEdit: (cid) => {
    const entry = outbox.get(cid);
    if (!entry) return;
    outbox.remove(cid);
    list.discard(cid);
    el.input.value = entry.text;
    updateComposer();
    el.input.focus();
    updateEmpty();
  },
});

// ---------- Start ----------

function main() {
  setupSidebar();
  renderRooms();
  el.meAvatar.replaceWith(avatar(pageUser));

  const client = pageUser ? findClient(pageUser) : null;
  if (!client) {
    showGate(
      "No token for this client",
      `This browser has no token for “${pageUser}”. Create the client on the registration page (or open it from there), then come back.`,
    );
    setStatus("offline", "Not signed in");
    return;
  }

  for (const entry of outbox.all()) {
    list.addPending({ cid: entry.cid, text: entry.text, ts: entry.ts, status: entry.failed ? "failed" : "pending" });
    if (entry.failed) list.setStatus(entry.cid, "failed", entry.failed);
  }
  updateEmpty();

  connection = new Connection({ token: client.token });
  connection.addEventListener("state", (event) => onState(event.detail));
  connection.addEventListener("ready", (event) => onReady(event.detail));
  connection.addEventListener("frame", (event) => onFrame(event.detail));
  connection.join(room);
  connection.start();

  setupComposer();
  setupTimeline();
  el.bannerRetry.addEventListener("click", () => connection.retryNow());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") connection.retryNow();
  });
  window.addEventListener("pagehide", () => connection.stop("page closed"));
  // Back from the back/forward cache the socket is gone for good: start over.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) window.location.reload();
  });
}

// ---------- Connection state ----------

const STATE_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

function setStatus(stateName, label = STATE_LABELS[stateName]) {
  el.status.dataset.state = stateName;
  el.statusText.textContent = label;
}

function onState({ state: stateName, retryAt, reason }) {
  setStatus(stateName);
  clearInterval(state.countdownTimer);
  if (stateName !== "connected") {
    state.joined = false;
    state.loadingOlder = false;
    // Who is online is unknown until the next `joined`.
    el.people.classList.add("people--stale");
    if (state.everJoined) el.onlineSummary.textContent = "Waiting for the connection…";
  }

  if (stateName === "connected" || stateName === "connecting") {
    el.banner.hidden = true;
    return;
  }
  if (reason === "auth") {
    el.banner.hidden = true;
    el.input.disabled = true;
    el.send.disabled = true;
    showGate(
      "Please register again",
      `The server did not accept the token for “${pageUser}” (it may have been issued by another deployment, or the server’s secret changed). Create the client again on the registration page.`,
    );
    return;
  }
  if (reason === "page closed") return;

  const render = () => {
    const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    const lead = stateName === "offline" ? "You are offline." : "Connection lost, reconnecting.";
    const when = retryAt && seconds > 0 ? ` Next try in ${seconds} s.` : "";
    el.bannerText.textContent = `${lead}${when} Messages you send will go out when it is back.`;
  };
  render();
  state.countdownTimer = setInterval(render, 1000);
  el.banner.hidden = false;
  el.banner.classList.toggle("banner--danger", stateName === "offline");
  el.bannerRetry.hidden = stateName !== "offline";
}

function onReady(frame) {
  if (typeof frame.user === "string" && frame.user) {
    state.me = frame.user;
    list.setMe(frame.user);
  }
  state.joined = false;
  state.earlyMessages = [];
}

// ---------- Frames ----------

function onFrame(frame) {
  if (frame.room !== undefined && frame.room !== room) return;
  switch (frame.type) {
    case "joined":
      return onJoined(frame);
    case "message":
      return onMessage(frame);
    case "history":
      return onHistory(frame);
    case "typing":
      return onTyping(frame);
    case "presence":
      return renderPeople(frame.users);
    case "error":
      return onError(frame);
    default:
      return undefined;
  }
}

function onJoined(frame) {
  const messages = Array.isArray(frame.messages) ? frame.messages : [];
  const stick = !state.everJoined || isNearBottom();
  const hadMessages = list.delivered.length > 0;

  if (frame.reset) {
    list.reset([]);
    if (hadMessages) flash("The server's history was reset; showing what it has now.", "info");
  }
  const live = state.everJoined && !frame.reset;
  for (const msg of messages) {
    if (applyMessage(msg, live) === "added" && live) noteIncoming(msg);
  }
  // While reconnecting the server may already have streamed newer messages.
  for (const msg of state.earlyMessages) {
    if (applyMessage(msg, true) === "added") noteIncoming(msg);
  }
  state.earlyMessages = [];

  if (frame.reset || !state.everJoined) state.hasMore = Boolean(frame.has_more);
  state.joined = true;
  state.everJoined = true;
  joinRetryDelay = 1000;
  connection.markSeen(room, list.newestId);
  renderPeople(frame.users);
  renderHistoryNote();
  updateEmpty();
  flushOutbox();

  if (stick) scrollToBottom();
  maybeLoadOlder();
}

function onMessage(frame) {
  if (!state.joined) {
    state.earlyMessages.push(frame);
    return;
  }
  const stick = isNearBottom() || list.isOwn(frame.user);
  const result = applyMessage(frame, true);
  if (result === "added" || result === "delivered") {
    connection.markSeen(room, list.newestId);
    stopTyping(frame.user);
    updateEmpty();
    if (list.delivered.length === 1) renderHistoryNote();
    if (result === "added") noteIncoming(frame);
    if (stick) scrollToBottom();
    else if (!list.isOwn(frame.user)) showNewMessagesCue(1);
  }
}

/** Shows a message once; an echo of one of ours also settles its outbox entry. */
function applyMessage(msg, fresh) {
  const result = list.append(msg, { fresh });
  if ((result === "delivered" || result === "duplicate") && list.isOwn(msg.user)) outbox.remove(msg.cid);
  return result;
}

function onHistory(frame) {
  clearTimeout(state.loadingTimer);
  state.loadingOlder = false;
  state.hasMore = Boolean(frame.has_more);
  const messages = Array.isArray(frame.messages) ? frame.messages : [];
  // Keep the distance to the bottom fixed, so what the user is reading stays put.
  const fromBottom = el.timeline.scrollHeight - el.timeline.scrollTop;
  const added = list.prepend(messages);
  if (added) el.timeline.scrollTop = el.timeline.scrollHeight - fromBottom;
  // Only duplicates came back: asking again with the same `before` would loop.
  if (!added) state.hasMore = false;
  renderHistoryNote();
  updateEmpty();
  maybeLoadOlder();
}

let joinRetryDelay = 1000;

function retryJoin() {
  flash("The server cannot load this room right now; retrying…", "info");
  setTimeout(() => {
    if (!state.joined) connection.join(room);
  }, joinRetryDelay);
  joinRetryDelay = Math.min(joinRetryDelay * 2, 15000);
}

function onError(frame) {
  const cid = typeof frame.cid === "string" ? frame.cid : null;
  const entry = cid ? outbox.get(cid) : null;
  switch (frame.code) {
    case "unavailable":
      if (entry) {
        const delay = outbox.retryLater(cid, () => resend(cid));
        if (delay === null) {
          markFailed(cid, "Not sent: the server could not store it.");
        } else {
          list.setStatus(cid, "pending", "Server busy, retrying…");
          flash("The server could not store your message yet; retrying automatically.", "info");
        }
      } else if (!state.joined) {
        // The join itself was refused (history unavailable): ask again, backing off.
        retryJoin();
      } else {
        flash(frame.message || "The server is temporarily unavailable.");
      }
      return;
    case "rate_limited":
      if (entry) {
        const delay = outbox.retryLater(cid, () => resend(cid), 2000);
        if (delay === null) markFailed(cid, "Not sent: too many messages.");
        else list.setStatus(cid, "pending", "Waiting to send…");
        flash("You are sending messages too fast. Slow down a little.");
      }
      // A refused typing notice needs no feedback.
      return;
    case "text_too_long":
      if (entry) markFailed(cid, "Not sent: too long.");
      flash(`That message is too long (the limit is ${MAX_TEXT_CHARS.toLocaleString()} characters).`);
      return;
    case "empty_text":
      if (entry) markFailed(cid, "Not sent: empty.");
      flash("Messages can't be empty.");
      return;
    case "invalid_room":
      flash(frame.message || "This room name is not valid.");
      return;
    case "not_joined":
      // The server lost our subscription: join again; pending messages are re-sent
      // after the `joined` that answers it.
      state.joined = false;
      connection.join(room);
      return;
    default:
      if (entry) markFailed(cid, `Not sent: ${frame.message || frame.code}.`);
      else console.warn("chat: server error", frame);
  }
}

// ---------- Outgoing ----------

function sendMessage(text) {
  const cid = newCid();
  const ts = Date.now();
  outbox.add({ cid, text, ts });
  list.addPending({ cid, text, ts });
  updateEmpty();
  scrollToBottom();
  if (state.joined) connection.send({ type: "send", room, text, cid });
}

/** Re-sends every pending message with its original cid (the server dedupes). */
function flushOutbox() {
  for (const item of list.pending()) {
    const entry = outbox.get(item.cid);
    if (!entry || entry.waiting) continue;
    connection.send({ type: "send", room, text: entry.text, cid: entry.cid });
  }
}

function resend(cid) {
  const entry = outbox.get(cid);
  if (!entry) return;
  list.setStatus(cid, "pending");
  if (state.joined) connection.send({ type: "send", room, text: entry.text, cid });
}

/** The user's "Retry": starts the automatic retries afresh. */
function retry(cid) {
  if (!outbox.get(cid)) return;
  outbox.clearWait(cid);
  outbox.setFailed(cid, null);
  resend(cid);
}

function markFailed(cid, reason) {
  outbox.setFailed(cid, reason);
  list.setStatus(cid, "failed", reason);
}

// ---------- Composer ----------

function setupComposer() {
  el.input.disabled = false;
  updateComposer();

  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.input.addEventListener("input", () => {
    updateComposer();
    noteTyping();
  });
  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) {
      flash("Type a message first.", "info", true);
      return;
    }
    const length = Array.from(text).length;
    if (length > MAX_TEXT_CHARS) {
      flash(`That message is ${length.toLocaleString()} characters; the limit is ${MAX_TEXT_CHARS.toLocaleString()}.`, "error", true);
      return;
    }
    sendMessage(text);
    el.input.value = "";
    clearTimeout(state.typingTimer);
    state.typingTimer = 0;
    updateComposer();
    if (state.feedbackFromInput) clearFeedback();
    el.input.focus();
  });
}

/**
 * Tells the room we are typing, at most every 2 s. A keystroke inside the quiet
 * period schedules one notice at its end, so a short burst of typing right after the
 * previous notice is still announced.
 */
function noteTyping() {
  if (!el.input.value.trim() || state.typingTimer) return;
  const wait = state.lastTypingSent + TYPING_SEND_EVERY_MS - Date.now();
  const sendNow = () => {
    state.typingTimer = 0;
    if (!el.input.value.trim() || !state.joined) return;
    if (connection.send({ type: "typing", room })) state.lastTypingSent = Date.now();
  };
  if (wait <= 0) sendNow();
  else state.typingTimer = setTimeout(sendNow, wait);
}

function updateComposer() {
  const length = Array.from(el.input.value.trim()).length;
  el.send.disabled = el.input.disabled || length === 0;
  if (length >= WARN_AT_CHARS) {
    el.count.textContent = `${length.toLocaleString()}/${MAX_TEXT_CHARS.toLocaleString()}`;
    el.count.className = length > MAX_TEXT_CHARS ? "composer__count composer__count--over" : "composer__count composer__count--warn";
  } else {
    el.count.textContent = "";
    el.count.className = "composer__count";
  }
}

/**
 * Feedback next to the composer. `fromInput` marks feedback about what was typed,
 * which the next successful send clears; news from the server stays its full time.
 */
function flash(text, kind = "error", fromInput = false) {
  clearTimeout(state.feedbackTimer);
  el.feedback.textContent = text;
  el.feedback.classList.toggle("composer__feedback--info", kind === "info");
  state.feedbackFromInput = fromInput;
  state.feedbackTimer = setTimeout(clearFeedback, 6000);
}

function clearFeedback() {
  clearTimeout(state.feedbackTimer);
  el.feedback.textContent = "";
}

// ---------- Timeline ----------

function setupTimeline() {
  el.timeline.addEventListener(
    "scroll",
    () => {
      state.atBottom = isNearBottom();
      if (state.atBottom) hideNewMessagesCue();
      maybeLoadOlder();
    },
    { passive: true },
  );
  // When the composer grows, the keyboard opens or the window shrinks, a reader
  // who was at the newest message stays there.
  new ResizeObserver(() => {
    if (state.atBottom) scrollToBottom();
  }).observe(el.timeline);
  el.newMessages.addEventListener("click", () => {
    scrollToBottom(true);
    hideNewMessagesCue();
  });
}

function isNearBottom() {
  const t = el.timeline;
  return t.scrollHeight - t.scrollTop - t.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom(smooth = false) {
  state.atBottom = true;
  el.timeline.scrollTo({ top: el.timeline.scrollHeight, behavior: smooth ? "smooth" : "auto" });
}

function maybeLoadOlder() {
  if (!state.hasMore || state.loadingOlder || !state.joined) return;
  if (el.timeline.scrollTop > LOAD_OLDER_PX) return;
  const before = list.oldestId;
  if (!before) return;
  if (!connection.send({ type: "history", room, before, limit: HISTORY_PAGE })) return;
  state.loadingOlder = true;
  renderHistoryNote();
  // A lost answer must not block scroll-back for good.
  clearTimeout(state.loadingTimer);
  state.loadingTimer = setTimeout(() => {
    state.loadingOlder = false;
    renderHistoryNote();
  }, 10_000);
}

function renderHistoryNote() {
  if (state.loadingOlder) el.historyStatus.textContent = "Loading earlier messages…";
  else if (!state.everJoined) el.historyStatus.textContent = "";
  else if (state.hasMore) el.historyStatus.textContent = "Scroll up for earlier messages";
  else if (list.delivered.length) el.historyStatus.textContent = `This is the beginning of #${room}.`;
  else el.historyStatus.textContent = "";
}

function updateEmpty() {
  el.empty.hidden = !state.everJoined || list.size > 0;
}

function showNewMessagesCue(n) {
  state.unseen += n;
  el.newMessages.firstChild.textContent = state.unseen === 1 ? "1 new message " : `${state.unseen} new messages `;
  el.newMessages.hidden = false;
}

function hideNewMessagesCue() {
  state.unseen = 0;
  el.newMessages.hidden = true;
}

/** Screen readers hear live messages from others; history loads stay quiet. */
function noteIncoming(msg) {
  if (list.isOwn(msg.user)) return;
  const line = document.createElement("p");
  line.textContent = `${msg.user}: ${msg.text}`;
  el.announcer.append(line);
  while (el.announcer.childElementCount > 5) el.announcer.firstElementChild.remove();
}

// ---------- Typing ----------

function onTyping(frame) {
  if (typeof frame.user !== "string" || list.isOwn(frame.user)) return;
  clearTimeout(state.typers.get(frame.user));
  state.typers.set(frame.user, setTimeout(() => stopTyping(frame.user), TYPING_SHOW_MS));
  renderTyping();
}

function stopTyping(user) {
  if (!state.typers.has(user)) return;
  clearTimeout(state.typers.get(user));
  state.typers.delete(user);
  renderTyping();
}

function renderTyping() {
  const names = [...state.typers.keys()];
  if (names.length === 0) el.typing.textContent = "";
  else if (names.length > 3) el.typing.textContent = "Several people are typing";
  else el.typing.textContent = `${listNames(names)} ${names.length === 1 ? "is" : "are"} typing`;
}

// ---------- People and rooms ----------

function renderPeople(users) {
  if (!Array.isArray(users)) return;
  const unique = [...new Set(users.filter((u) => typeof u === "string"))];
  unique.sort((a, b) => {
    if (list.isOwn(a)) return -1;
    if (list.isOwn(b)) return 1;
    return a.localeCompare(b, undefined, { sensitivity: "base" });
  });
  state.users = unique;
  el.people.classList.remove("people--stale");
  const items = unique.map((user) => {
    const li = document.createElement("li");
    li.className = "person";
    li.dataset.user = user;
    const name = document.createElement("span");
    name.className = "person__name";
    name.textContent = user;
    li.append(avatar(user, "avatar--small"), name);
    if (list.isOwn(user)) {
      const you = document.createElement("span");
      you.className = "person__you";
      you.textContent = "(you)";
      li.append(you);
    }
    return li;
  });
  el.people.replaceChildren(...items);
  el.onlineCount.textContent = String(unique.length);
  const others = unique.filter((u) => !list.isOwn(u));
  el.onlineSummary.textContent =
    others.length === 0 ? "Only you are here" : `${unique.length} online · ${listNames(others)}`;
}

function renderRooms() {
  const rooms = rememberRoom(room);
  if (!rooms.includes("general")) rooms.push("general");
  const items = [...new Set([...rooms, ...loadRecentRooms()])].sort().map((name) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.className = "room-link";
    a.href = chatUrl(pageUser, name);
    a.textContent = name;
    if (name === room) a.setAttribute("aria-current", "page");
    li.append(a);
    return li;
  });
  el.roomList.replaceChildren(...items);

  el.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.joinInput.value.trim().replace(/^#/, "").toLowerCase();
    const problem = roomProblem(name);
    if (problem) {
      el.joinError.textContent = problem;
      el.joinError.hidden = false;
      el.joinInput.setAttribute("aria-invalid", "true");
      el.joinInput.focus();
      return;
    }
    window.location.assign(chatUrl(pageUser, name));
  });
  el.joinInput.addEventListener("input", () => {
    el.joinError.hidden = true;
    el.joinInput.removeAttribute("aria-invalid");
  });
}

function setupSidebar() {
  const open = (yes) => {
    el.app.classList.toggle("sidebar-open", yes);
    el.sidebarOpen.setAttribute("aria-expanded", String(yes));
    el.scrim.hidden = !yes;
    if (yes) el.sidebarClose.focus();
  };
  el.sidebarOpen.addEventListener("click", () => open(true));
  el.sidebarClose.addEventListener("click", () => {
    open(false);
    el.sidebarOpen.focus();
  });
  el.scrim.addEventListener("click", () => open(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && el.app.classList.contains("sidebar-open")) open(false);
  });
}

function showGate(title, text) {
  el.gateTitle.textContent = title;
  el.gateText.textContent = text;
  el.gate.hidden = false;
}

main();
