// Registration over HTTP and what this browser remembers: its clients (with their
// tokens) and the rooms it visited. Shared by the registration and chat pages.

export const USERNAME_RE = /^[A-Za-z0-9_.-]{1,24}$/;
export const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
export const MAX_TEXT_CHARS = 2000;

const CLIENTS_KEY = "chat.clients";
const ROOMS_KEY = "chat.rooms";
const MAX_RECENT_ROOMS = 12;

/** Why a username is not acceptable, or null when it is. */
export function usernameProblem(name) {
  if (name.length === 0) return "Enter a username.";
  if (name.length > 24) return "Use at most 24 characters.";
  if (!USERNAME_RE.test(name)) return "Use only letters, digits, and _ . -";
  return null;
}

/** Why a room name is not acceptable, or null when it is. */
export function roomProblem(room) {
  if (room.length === 0) return "Enter a room name.";
  if (room.length > 32) return "Use at most 32 characters.";
  if (!ROOM_RE.test(room)) return "Lowercase letters, digits, _ and -, starting with a letter or digit.";
  return null;
}

export function chatUrl(username, room) {
  const path = `/chat/${encodeURIComponent(username)}`;
  return room && room !== "general" ? `${path}?room=${encodeURIComponent(room)}` : path;
}

// localStorage can throw (private mode, quota, disabled storage): the UI still works
// for the current page without it.
function readJson(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw ? JSON.parse(raw) : fallback;
  } catch {
    return fallback;
  }
}

function writeJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

/** The clients created in this browser: [{username, token}], newest first. */
export function loadClients() {
  const list = readJson(CLIENTS_KEY, []);
  if (!Array.isArray(list)) return [];
  return list.filter(
    (c) => c && typeof c.username === "string" && typeof c.token === "string",
  );
}

export function rememberClient(client) {
  const others = loadClients().filter(
    (c) => c.username.toLowerCase() !== client.username.toLowerCase(),
  );
  writeJson(CLIENTS_KEY, [{ username: client.username, token: client.token }, ...others]);
}

export function forgetClient(username) {
  const key = username.toLowerCase();
  writeJson(CLIENTS_KEY, loadClients().filter((c) => c.username.toLowerCase() !== key));
}

/** The stored client for a username; names are unique ignoring case. */
export function findClient(username) {
  const key = username.toLowerCase();
  return loadClients().find((c) => c.username.toLowerCase() === key) ?? null;
}

export function loadRecentRooms() {
  const list = readJson(ROOMS_KEY, []);
  return Array.isArray(list) ? list.filter((r) => typeof r === "string" && ROOM_RE.test(r)) : [];
}

export function rememberRoom(room) {
  const rooms = [room, ...loadRecentRooms().filter((r) => r !== room)].slice(0, MAX_RECENT_ROOMS);
  writeJson(ROOMS_KEY, rooms);
  return rooms;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const FALLBACK_MESSAGES = {
  400: "That username is not valid.",
  409: "That name is taken.",
};

/** POST /api/clients; resolves to {username, token} or rejects with ApiError. */
export async function registerClient(username) {
  let response;
  try {
    response = await fetch("/api/clients", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username }),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "Could not reach the server. Check your connection and try again.");
  }

  let body = null;
  try {
    body = await response.json();
  } catch {
    // A proxy error page or an empty body: fall through to the generic messages.
  }

  if (response.status === 201 && body && typeof body.token === "string") {
    return { username: typeof body.username === "string" ? body.username : username, token: body.token };
  }
  const error = body && typeof body === "object" ? body.error : null;
  const message =
    (error && typeof error.message === "string" && error.message) ||
    FALLBACK_MESSAGES[response.status] ||
    `The server answered ${response.status}. Try again in a moment.`;
  throw new ApiError(response.status, (error && error.code) || "http_error", message);
}
