// The WebSocket to /ws: auth, joining rooms (resuming with `since`), keep-alive,
// and reconnecting with exponential backoff and jitter. It knows frames, not the DOM.
//
// Events (all CustomEvent, payload in `detail`):
//   "state"  {state, attempt, retryAt, reason}   state: connecting | connected | reconnecting | offline
//   "ready"  {user, instance}
//   "frame"  the parsed server frame (every one, including ready/joined/pong)

const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const READY_TIMEOUT_MS = 10_000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10_000;
// After this many failed attempts in a row the UI says "offline" (still retrying).
const OFFLINE_AFTER_ATTEMPTS = 4;

export const CLOSE_AUTH_FAILED = 4401;

export function websocketUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/** Delay before reconnect attempt `attempt` (0-based): 0.5 s doubling to 10 s, with jitter. */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  // "Equal jitter": never less than half the ceiling, so retries stay spaced out,
  // but spread enough that a restarted server is not hit by every tab at once.
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export class Connection extends EventTarget {
  /**
   * @param {{token: string, url?: string}} options
   */
  constructor({ token, url = websocketUrl() }) {
    super();
    this.token = token;
    this.url = url;
    this.state = "connecting";
    this.user = null;
    this.ws = null;
    this.ready = false;
    this.stopped = false;
    this.attempt = 0;
    this.rooms = new Map(); // room -> {since: id | null}
    this.timers = { retry: 0, ping: 0, pong: 0, readyWait: 0 };
    this.retryAt = 0;

    this.onOnline = () => this.retryNow();
    this.onOffline = () => {
      if (!this.ready) this.setState("offline", { reason: "network" });
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Stops for good (auth failure, page leaving): no more reconnects. */
  stop(reason = "stopped") {
    this.stopped = true;
    this.clearTimers();
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      try {
        ws.close(1000, "bye");
      } catch {
        // already closing
      }
    }
    this.ready = false;
    this.setState("offline", { reason });
  }

  /** Subscribe to a room now (if connected) and after every reconnect. */
  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, { since: null });
    if (this.ready) this.sendJoin(room);
  }

  leave(room) {
    this.rooms.delete(room);
    this.send({ type: "leave", room });
  }

  /** The last message id seen in a room; the next (re)join resumes after it. */
  markSeen(room, id) {
    const entry = this.rooms.get(room);
    if (entry) entry.since = id;
  }

  /** Forget the resume point, e.g. after the server reset the room's history. */
  resetSeen(room) {
    this.markSeen(room, null);
  }

  /** Sends a frame if the connection is authenticated; returns whether it went out. */
  send(frame) {
    if (!this.ready || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Skip the rest of the backoff wait (the user clicked "retry", or the network came back). */
  retryNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timers.retry);
    this.open();
  }

  // ----- internals -----

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(
      new CustomEvent("state", {
        detail: { state, attempt: this.attempt, retryAt: this.retryAt, ...extra },
      }),
    );
  }

  clearTimers() {
    clearTimeout(this.timers.retry);
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
    clearTimeout(this.timers.readyWait);
  }

  open() {
    if (this.stopped) return;
    this.clearTimers();
    this.ready = false;
    this.retryAt = 0;
    if (this.attempt === 0) this.setState("connecting");
    else this.setState(this.attempt >= OFFLINE_AFTER_ATTEMPTS ? "offline" : "reconnecting");

    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;

    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token: this.token }));
      // A server that accepts the socket but never answers auth is as good as down.
      this.timers.readyWait = setTimeout(() => this.drop(ws, "no ready"), READY_TIMEOUT_MS);
    };
    ws.onmessage = (event) => this.onMessage(ws, event);
    ws.onclose = (event) => this.onClose(ws, event);
    ws.onerror = () => {
      // Always followed by close; the reconnect is decided there.
    };
  }

  onMessage(ws, event) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;

    // Any frame proves the link is alive.
    clearTimeout(this.timers.pong);

    if (frame.type === "ready") {
      clearTimeout(this.timers.readyWait);
      this.ready = true;
      this.attempt = 0;
      this.user = frame.user;
      this.startHeartbeat(ws);
      this.setState("connected");
      this.dispatchEvent(new CustomEvent("ready", { detail: frame }));
      for (const room of this.rooms.keys()) this.sendJoin(room);
    } else if (frame.type === "error" && frame.code === "unauthorized" && !this.ready) {
      // Token refused during auth; the close with 4401 follows, but don't rely on it.
      this.failAuth();
      return;
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = false;
    this.clearTimers();
    if (this.stopped) return;
    if (event.code === CLOSE_AUTH_FAILED) {
      this.failAuth();
      return;
    }
    // 1001 (server going away), 1006 (dropped), 1008/1013 (told to back off) and
    // anything else: try again, backing off.
    this.scheduleReconnect();
  }

  failAuth() {
    this.stop("auth");
  }

  scheduleReconnect() {
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    const offline = this.attempt >= OFFLINE_AFTER_ATTEMPTS || navigator.onLine === false;
    this.setState(offline ? "offline" : "reconnecting", { reason: "retrying" });
    this.timers.retry = setTimeout(() => this.open(), delay);
  }

  sendJoin(room) {
    const entry = this.rooms.get(room);
    this.send({ type: "join", room, since: entry ? entry.since : null });
  }

  startHeartbeat(ws) {
    clearInterval(this.timers.ping);
    this.timers.ping = setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this.timers.pong);
      this.timers.pong = setTimeout(() => this.drop(ws, "no pong"), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  /** Abandons a socket that stopped answering and reconnects without waiting for TCP. */
  drop(ws, why) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = false;
    ws.onclose = null;
    try {
      ws.close(4000, why);
    } catch {
      // ignore
    }
    this.clearTimers();
    this.scheduleReconnect();
  }
}
