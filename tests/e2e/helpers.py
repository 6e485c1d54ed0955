"""Page helpers shared by the browser tests."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import aiohttp
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect

from .server import ChatServer


@dataclass
class Watch:
    """Console errors, uncaught exceptions and dialogs of one page."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                self.errors.append(msg.text)

        def on_dialog(dialog) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("dialog", on_dialog)
        return page

    def assert_clean(self, allow_websocket_errors: bool = False) -> None:
        errors = self.errors
        if allow_websocket_errors:
            # Chromium logs every refused reconnect attempt while the server is down.
            errors = [
                e for e in errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e
            ]
        assert errors == [], f"console errors: {errors}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"


def register(page: Page, username: str) -> None:
    """Create a client through the form and wait until it is listed."""
    page.get_by_label("Username").fill(username)
    page.get_by_role("button", name="Create").click()
    expect(page.locator(f'#clients .client[data-username="{username}"]')).to_be_visible()


def open_chat_from_list(context: BrowserContext, page: Page, username: str, watch: Watch) -> Page:
    """Click "Open chat" for a listed client: it opens in a new tab."""
    link = page.locator(f'#clients .client[data-username="{username}"]').get_by_role("link")
    expect(link).to_have_attribute("target", "_blank")
    with context.expect_page() as info:
        link.click()
    chat = watch.attach(info.value)
    chat.wait_for_load_state()
    return chat


def seed_client(page: Page, server: ChatServer, username: str) -> None:
    """Register over HTTP and store the token where the pages look for it."""
    client = server.register(username)
    page.goto(f"{server.url}/")
    page.evaluate(
        """(client) => {
            const list = JSON.parse(localStorage.getItem("chat.clients") || "[]")
                .filter((c) => c.username !== client.username);
            localStorage.setItem("chat.clients", JSON.stringify([client, ...list]));
        }""",
        client,
    )


def seed_clients(
    context: BrowserContext, server: ChatServer, watch: Watch, *usernames: str
) -> Page:
    """Register each client over HTTP from one new watched page; that page is returned."""
    page = watch.attach(context.new_page())
    for username in usernames:
        seed_client(page, server, username)
    return page


def open_chats(
    context: BrowserContext, server: ChatServer, watch: Watch, *usernames: str
) -> list[Page]:
    """Seed the clients, then open a connected chat tab for each, in order."""
    seed_clients(context, server, watch, *usernames)
    return [open_chat(context, server, username, watch) for username in usernames]


def open_chat(
    context: BrowserContext,
    server: ChatServer,
    username: str,
    watch: Watch,
    room: str | None = None,
) -> Page:
    page = watch.attach(context.new_page())
    suffix = f"?room={room}" if room else ""
    page.goto(f"{server.url}/chat/{username}{suffix}")
    expect_connected(page)
    return page


def expect_connected(page: Page, timeout: float = 10_000) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=timeout)
    expect(page.locator("#composer-input")).to_be_enabled()


def send(page: Page, text: str) -> None:
    """Type a message and press Enter."""
    box = page.locator("#composer-input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def message(page: Page, text: str):
    """The message items whose text is exactly `text`."""
    return page.locator("#messages .msg").filter(has=page.locator(".msg__bubble", has_text=text))


def bubbles(page: Page):
    return page.locator("#messages .msg .msg__bubble")


def seed_messages(server: ChatServer, room: str, texts: list[str], per_user: int = 8) -> None:
    """Post messages in order over the WebSocket protocol, from several users so that
    no one user hits the send rate limit; each send waits for its acknowledgement."""

    async def post_all() -> None:
        async with aiohttp.ClientSession() as session:
            for start in range(0, len(texts), per_user):
                user = server.register(f"seed{start // per_user}")
                async with session.ws_connect(f"{server.url}/ws") as ws:
                    await ws.send_json({"type": "auth", "token": user["token"]})
                    await expect_frame(ws, "ready")
                    await ws.send_json({"type": "join", "room": room, "since": None})
                    await expect_frame(ws, "joined")
                    for i, text in enumerate(texts[start : start + per_user]):
                        cid = f"seed-{start + i}"
                        await ws.send_json({"type": "send", "room": room, "text": text, "cid": cid})
                        while True:
                            frame = await expect_frame(ws, "message")
                            if frame.get("cid") == cid:
                                break

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(post_all(), 60))
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    # Playwright's sync API owns this thread's event loop.
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


async def expect_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict:
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"socket ended waiting for {kind}: {msg}"
        frame = json.loads(msg.data)
        assert frame.get("type") != "error", f"server refused a frame: {frame}"
        if frame.get("type") == kind:
            return frame
