// The registration page: create a client, and list the ones this browser holds.

import { chatUrl, forgetClient, loadClients, registerClient, rememberClient, usernameProblem } from "./api.js";
import { avatar } from "./text.js";

const form = document.getElementById("register-form");
const input = document.getElementById("username");
const submit = document.getElementById("register-submit");
const error = document.getElementById("username-error");
const listEl = document.getElementById("clients");
const emptyEl = document.getElementById("clients-empty");

function showError(message) {
  error.textContent = message;
  error.hidden = false;
  input.setAttribute("aria-invalid", "true");
}

function clearError() {
  error.hidden = true;
  error.textContent = "";
  input.removeAttribute("aria-invalid");
}

function renderClients(highlight = null) {
  const clients = loadClients();
  emptyEl.hidden = clients.length > 0;
  const items = clients.map(({ username }) => {
    const li = document.createElement("li");
    li.className = "client";
    li.dataset.username = username;
    if (highlight && highlight.toLowerCase() === username.toLowerCase()) li.classList.add("client--new");

    const name = document.createElement("span");
    name.className = "client__name";
    name.textContent = username;

    const actions = document.createElement("div");
    actions.className = "client__actions";

    const open = document.createElement("a");
    open.className = "button button--primary button--small";
    open.href = chatUrl(username);
    open.target = "_blank";
    open.rel = "noopener";
    open.textContent = "Open chat";
    open.setAttribute("aria-label", `Open chat as ${username} (new tab)`);

    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "button button--small button--ghost button--danger";
    forget.textContent = "Forget";
    forget.dataset.forget = username;
    forget.setAttribute("aria-label", `Forget ${username}`);

    actions.append(open, forget);
    li.append(avatar(username), name, actions);
    return li;
  });
  listEl.replaceChildren(...items);
}

listEl.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-forget]");
  if (!button) return;
  forgetClient(button.dataset.forget);
  renderClients();
  input.focus();
});

input.addEventListener("input", clearError);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = input.value.trim();
  const problem = usernameProblem(username);
  if (problem) {
    showError(problem);
    input.focus();
    return;
  }
  clearError();
  submit.disabled = true;
  submit.textContent = "Creating…";
  try {
    const client = await registerClient(username);
    rememberClient(client);
    input.value = "";
    renderClients(client.username);
  } catch (err) {
    showError(err.message || "Something went wrong. Try again.");
  } finally {
    submit.disabled = false;
    submit.textContent = "Create";
    input.focus();
  }
});

// Another tab may add or forget clients.
window.addEventListener("storage", (event) => {
  if (event.key === "chat.clients" || event.key === null) renderClients();
});

renderClients();
