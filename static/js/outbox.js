// Messages written but not yet acknowledged, with their cids. Kept in sessionStorage
// so a reload of the tab (while offline, say) re-sends them with the same cids, which
// the server turns into at most one message each.

const MAX_AUTO_RETRIES = 5;
const MAX_RETRY_DELAY_MS = 30_000;

export class Outbox {
  constructor(user, room) {
    this.key = `chat.outbox.${user.toLowerCase()}.${room}`;
    this.entries = new Map(); // cid -> {cid, text, ts, failed, retries, waiting}
    this.timers = new Map();
    for (const entry of this.load()) this.entries.set(entry.cid, entry);
  }

  all() {
    return [...this.entries.values()];
  }

  get(cid) {
    return this.entries.get(cid) ?? null;
  }

  add({ cid, text, ts }) {
    this.entries.set(cid, { cid, text, ts, failed: null, retries: 0, waiting: false });
    this.save();
  }

  remove(cid) {
    if (!cid || !this.entries.has(cid)) return;
    this.clearWait(cid);
    this.entries.delete(cid);
    this.save();
  }

  setFailed(cid, reason) {
    const entry = this.entries.get(cid);
    if (!entry) return;
    entry.failed = reason;
    if (!reason) entry.retries = 0;
    this.save();
  }

  /**
   * Schedules `resend` with a growing delay; returns the delay, or null once the
   * automatic retries are used up (the user can still retry by hand).
   */
  retryLater(cid, resend, baseMs = 1000) {
    const entry = this.entries.get(cid);
    if (!entry) return null;
    if (entry.retries >= MAX_AUTO_RETRIES) return null;
    const delay = Math.min(MAX_RETRY_DELAY_MS, baseMs * 2 ** entry.retries) * (0.75 + Math.random() * 0.5);
    entry.retries += 1;
    entry.waiting = true;
    this.clearWait(cid, false);
    this.timers.set(
      cid,
      setTimeout(() => {
        this.timers.delete(cid);
        entry.waiting = false;
        resend();
      }, delay),
    );
    return delay;
  }

  clearWait(cid, resetFlag = true) {
    clearTimeout(this.timers.get(cid));
    this.timers.delete(cid);
    const entry = this.entries.get(cid);
    if (entry && resetFlag) entry.waiting = false;
  }

  load() {
    try {
      const list = JSON.parse(sessionStorage.getItem(this.key) || "[]");
      if (!Array.isArray(list)) return [];
      return list
        .filter((e) => e && typeof e.cid === "string" && typeof e.text === "string")
        .map((e) => ({
          cid: e.cid,
          text: e.text,
          ts: typeof e.ts === "number" ? e.ts : Date.now(),
          failed: typeof e.failed === "string" ? e.failed : null,
          retries: 0,
          waiting: false,
        }));
    } catch {
      return [];
    }
  }

  save() {
    try {
      const list = this.all().map(({ cid, text, ts, failed }) => ({ cid, text, ts, failed }));
      if (list.length) sessionStorage.setItem(this.key, JSON.stringify(list));
      else sessionStorage.removeItem(this.key);
    } catch {
      // Storage unavailable: the outbox still works for this page's lifetime.
    }
  }
}
