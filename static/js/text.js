// Turning message data into DOM safely, and small formatting helpers.
// Message text only ever becomes text nodes; the only elements built from it are
// <a> links whose href passed the http/https check below.

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING_PUNCTUATION = /[.,;:!?'"»”’]+$/;

/** Strips punctuation that ends a sentence rather than the URL, and unbalanced ")" / "]". */
function trimUrl(candidate) {
  let url = candidate.replace(TRAILING_PUNCTUATION, "");
  for (const [open, close] of [["(", ")"], ["[", "]"]]) {
    while (url.endsWith(close) && count(url, close) > count(url, open)) {
      url = url.slice(0, -1).replace(TRAILING_PUNCTUATION, "");
    }
  }
  return url;
}

function count(text, ch) {
  return text.split(ch).length - 1;
}

/** The URL as a safe href, or null unless it parses as http(s). */
export function safeHref(candidate) {
  let parsed;
  try {
    parsed = new URL(candidate);
  } catch {
    return null;
  }
  return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
}

/** A fragment with the text as text nodes and its http(s) URLs as links. */
export function linkify(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    const url = trimUrl(match[0]);
    const href = safeHref(url);
    if (!href) continue;
    const start = match.index;
    if (start > last) fragment.append(document.createTextNode(text.slice(last, start)));
    const a = document.createElement("a");
    a.href = href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    a.textContent = url;
    fragment.append(a);
    last = start + url.length;
  }
  if (last < text.length) fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayYearFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });

export function formatTime(ms) {
  return timeFormat.format(new Date(ms));
}

export function formatFull(ms) {
  return fullFormat.format(new Date(ms));
}

/** Local calendar day, for grouping and day dividers. */
export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function dayLabel(ms, now = Date.now()) {
  const key = dayKey(ms);
  if (key === dayKey(now)) return "Today";
  if (key === dayKey(now - 86_400_000)) return "Yesterday";
  const sameYear = new Date(ms).getFullYear() === new Date(now).getFullYear();
  return (sameYear ? dayFormat : dayYearFormat).format(new Date(ms));
}

/** A stable colour slot (0..7) for a username, so each person keeps one avatar colour. */
export function colourSlot(name) {
  let hash = 0;
  for (const ch of name.toLowerCase()) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 8;
}

export function initial(name) {
  const first = Array.from(name.replace(/^[_.-]+/, ""))[0] ?? name[0] ?? "?";
  return first.toUpperCase();
}

export function avatar(name, extraClass = "") {
  const el = document.createElement("span");
  el.className = `avatar avatar--c${colourSlot(name)} ${extraClass}`.trim();
  el.setAttribute("aria-hidden", "true");
  el.textContent = initial(name);
  return el;
}

/** "alice", "alice and bob", "alice, bob and 3 others". */
export function listNames(names, max = 3) {
  if (names.length === 0) return "";
  if (names.length === 1) return names[0];
  if (names.length <= max) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  const rest = names.length - (max - 1);
  return `${names.slice(0, max - 1).join(", ")} and ${rest} others`;
}

export function newCid() {
  if (typeof crypto !== "undefined" && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // randomUUID needs a secure context; plain http on a LAN address is not one.
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
