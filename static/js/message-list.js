// The message timeline of one room: delivered messages in the server's order, then
// this user's outgoing ones (pending or failed). It dedupes by id, turns a pending
// message into the delivered one when its cid comes back, and groups consecutive
// messages of one sender under one header.

import { avatar, dayKey, dayLabel, formatFull, formatTime, linkify } from "./text.js";

const GROUP_GAP_MS = 5 * 60 * 1000;

export class MessageList {
  /**
   * @param {HTMLOListElement} listEl
   * @param {{me: string, onRetry: (cid: string) => void, onDiscard: (cid: string) => void, onEdit: (cid: string) => void}} options
   */
  constructor(listEl, { me, onRetry, onDiscard, onEdit }) {
    this.listEl = listEl;
    this.me = me;
    this.delivered = []; // server order
    this.outgoing = []; // pending and failed, in the order they were written
    this.byId = new Map();
    this.byCid = new Map(); // outgoing items only
    this.handlers = { onRetry, onDiscard, onEdit };
    listEl.addEventListener("click", (event) => this.onClick(event));
  }

  setMe(me) {
    this.me = me;
  }

  get size() {
    return this.delivered.length + this.outgoing.length;
  }

  get oldestId() {
    return this.delivered.length ? this.delivered[0].id : null;
  }

  get newestId() {
    return this.delivered.length ? this.delivered[this.delivered.length - 1].id : null;
  }

  has(id) {
    return this.byId.has(id);
  }

  isOwn(user) {
    return typeof user === "string" && typeof this.me === "string" && user.toLowerCase() === this.me.toLowerCase();
  }

  outgoingItem(cid) {
    return this.byCid.get(cid) ?? null;
  }

  pending() {
    return this.outgoing.filter((item) => item.status === "pending");
  }

  /**
   * Appends a delivered message unless it is already shown. If it is the echo of one
   * of our pending messages, that element becomes the delivered message.
   * @returns {"added" | "delivered" | "duplicate" | "invalid"}
   */
  append(msg, { fresh = false } = {}) {
    if (!isMessage(msg)) return "invalid";
    const mine = this.isOwn(msg.user) && msg.cid ? this.byCid.get(msg.cid) : null;
    if (this.byId.has(msg.id)) {
      // The original came back again (a retried cid): just drop the pending copy.
      if (mine) this.removeOutgoing(mine);
      return "duplicate";
    }
    if (mine) {
      this.deliver(mine, msg);
      return "delivered";
    }
    const item = this.makeItem(msg, "delivered");
    this.insertDelivered(item);
    if (fresh) item.el.classList.add("msg--fresh");
    return "added";
  }

  /** Adds older messages (oldest first) above the shown ones; returns how many were new. */
  prepend(messages) {
    const fresh = messages.filter((m) => isMessage(m) && !this.byId.has(m.id));
    if (fresh.length === 0) return 0;
    const items = fresh.map((m) => this.makeItem(m, "delivered"));
    const anchor = this.listEl.firstChild;
    const fragment = document.createDocumentFragment();
    for (const item of items) {
      fragment.append(item.el);
      this.byId.set(item.id, item);
    }
    this.listEl.insertBefore(fragment, anchor);
    this.delivered = items.concat(this.delivered);
    this.redecorate(0, items.length + 1);
    return items.length;
  }

  /** Replaces every delivered message (the server reset the room); outgoing ones stay. */
  reset(messages) {
    for (const item of this.delivered) item.el.remove();
    this.delivered = [];
    this.byId.clear();
    for (const msg of messages) this.append(msg);
    this.redecorate(0, this.size);
  }

  addPending({ cid, text, ts, status = "pending" }) {
    const item = this.makeItem({ id: null, cid, user: this.me, text, ts }, status);
    this.outgoing.push(item);
    this.byCid.set(cid, item);
    this.listEl.append(item.el);
    item.el.classList.add("msg--fresh");
    this.redecorate(this.size - 1, 1);
    return item;
  }

  setStatus(cid, status, reason = "") {
    const item = this.byCid.get(cid);
    if (!item) return;
    item.status = status;
    item.reason = reason;
    this.renderStatus(item);
  }

  removeOutgoing(item) {
    const index = this.outgoing.indexOf(item);
    if (index === -1) return;
    this.outgoing.splice(index, 1);
    this.byCid.delete(item.cid);
    item.el.remove();
    const position = this.delivered.length + index;
    this.redecorate(position, 1);
  }

  discard(cid) {
    const item = this.byCid.get(cid);
    if (item) this.removeOutgoing(item);
  }

  // ----- internals -----

  deliver(item, msg) {
    const index = this.outgoing.indexOf(item);
    this.outgoing.splice(index, 1);
    this.byCid.delete(item.cid);
    Object.assign(item, { id: msg.id, user: msg.user, text: msg.text, ts: msg.ts, status: "delivered", reason: "" });
    item.el.dataset.id = msg.id;
    // Same position (the usual case): update in place, so nothing jumps or flickers.
    if (index !== 0) {
      item.el.remove();
      this.listEl.insertBefore(item.el, this.outgoing.length ? this.outgoing[0].el : null);
    }
    this.delivered.push(item);
    this.byId.set(item.id, item);
    this.fillBody(item);
    this.renderStatus(item);
    this.redecorate(this.delivered.length - 1, index + 2);
  }

  insertDelivered(item) {
    const before = this.outgoing.length ? this.outgoing[0].el : null;
    this.listEl.insertBefore(item.el, before);
    this.delivered.push(item);
    this.byId.set(item.id, item);
    this.redecorate(this.delivered.length - 1, 2);
  }

  at(position) {
    if (position < this.delivered.length) return this.delivered[position];
    return this.outgoing[position - this.delivered.length];
  }

  /** Recomputes the group header and day divider of `count` items from `start`. */
  redecorate(start, count) {
    const end = Math.min(this.size, start + count);
    for (let i = Math.max(0, start); i < end; i += 1) {
      const item = this.at(i);
      const prev = i > 0 ? this.at(i - 1) : null;
      const newDay = !prev || dayKey(prev.ts) !== dayKey(item.ts);
      const first =
        newDay ||
        prev.user.toLowerCase() !== item.user.toLowerCase() ||
        item.ts - prev.ts > GROUP_GAP_MS;
      item.el.classList.toggle("msg--first", first);
      item.parts.day.hidden = !newDay;
      if (newDay) item.parts.dayLabel.textContent = dayLabel(item.ts);
    }
  }

  makeItem(msg, status) {
    const item = {
      id: msg.id,
      cid: msg.cid ?? null,
      user: msg.user,
      text: msg.text,
      ts: msg.ts,
      status,
      reason: "",
      el: null,
      parts: null,
    };
    const li = document.createElement("li");
    li.className = "msg";
    if (item.id) li.dataset.id = item.id;
    if (item.cid) li.dataset.cid = item.cid;
    li.dataset.user = item.user;
    li.classList.toggle("msg--own", this.isOwn(item.user));

    const day = document.createElement("div");
    day.className = "msg__day";
    day.setAttribute("role", "separator");
    const dayText = document.createElement("span");
    day.append(dayText);

    const row = document.createElement("div");
    row.className = "msg__row";
    const content = document.createElement("div");
    content.className = "msg__content";

    const header = document.createElement("div");
    header.className = "msg__header";
    const user = document.createElement("span");
    user.className = "msg__user";
    user.textContent = item.user;
    const time = document.createElement("time");
    time.className = "msg__time";
    header.append(user, time);

    const bubble = document.createElement("div");
    bubble.className = "msg__bubble";

    const statusEl = document.createElement("div");
    statusEl.className = "msg__status";

    content.append(header, bubble, statusEl);
    row.append(avatar(item.user, "msg__avatar"), content);
    li.append(day, row);

    item.el = li;
    item.parts = { day, dayLabel: dayText, time, bubble, status: statusEl };
    this.fillBody(item);
    this.renderStatus(item);
    return item;
  }

  fillBody(item) {
    const { time, bubble } = item.parts;
    time.dateTime = new Date(item.ts).toISOString();
    time.textContent = formatTime(item.ts);
    bubble.title = formatFull(item.ts);
    bubble.replaceChildren(linkify(item.text));
  }

  renderStatus(item) {
    const { el, parts } = item;
    el.classList.toggle("msg--pending", item.status === "pending");
    el.classList.toggle("msg--failed", item.status === "failed");
    el.classList.toggle("msg--delivered", item.status === "delivered");
    const status = parts.status;
    status.replaceChildren();
    status.hidden = item.status === "delivered";
    if (item.status === "pending") {
      const spinner = document.createElement("span");
      spinner.className = "spinner";
      spinner.setAttribute("aria-hidden", "true");
      status.append(spinner, document.createTextNode(item.reason || "Sending…"));
    } else if (item.status === "failed") {
      status.append(document.createTextNode(item.reason || "Not sent."));
      status.append(actionButton("Retry", "retry", item.cid));
      status.append(actionButton("Edit", "edit", item.cid));
      status.append(actionButton("Discard", "discard", item.cid));
    }
  }

  onClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const cid = button.dataset.cid;
    if (button.dataset.action === "retry") this.handlers.onRetry?.(cid);
    else if (button.dataset.action === "discard") this.handlers.onDiscard?.(cid);
    else if (button.dataset.action === "edit") this.handlers.onEdit?.(cid);
  }
}

function actionButton(label, action, cid) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "msg__action";
  button.dataset.action = action;
  button.dataset.cid = cid;
  button.textContent = label;
  return button;
}

function isMessage(msg) {
  return (
    msg &&
    typeof msg === "object" &&
    typeof msg.id === "string" &&
    typeof msg.user === "string" &&
    typeof msg.text === "string" &&
    typeof msg.ts === "number"
  );
}
