"""The browser front end against a real server process, as a person would use it."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Browser, BrowserContext, Page, expect

from .helpers import (
    Watch,
    bubbles,
    expect_connected,
    message,
    open_chat,
    open_chat_from_list,
    open_chats,
    register,
    seed_clients,
    seed_messages,
    send,
)
from .server import ROOT, ChatServer

SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_two_clients_chat_both_ways_with_presence_and_typing(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    home = watch.attach(context.new_page())
    home.goto(f"{server.url}/")
    register(home, "alice")
    register(home, "bob")

    alice = open_chat_from_list(context, home, "alice", watch)
    bob = open_chat_from_list(context, home, "bob", watch)
    assert alice.url == f"{server.url}/chat/alice"
    expect_connected(alice)
    expect_connected(bob)

    # Presence: each tab lists both users as online.
    for page in (alice, bob):
        expect(page.locator("#people .person")).to_have_count(2)
        expect(page.locator('#people .person[data-user="alice"]')).to_be_visible()
        expect(page.locator('#people .person[data-user="bob"]')).to_be_visible()

    # Typing is shown to the other side, never to the typist.
    alice.locator("#composer-input").press_sequentially("Hi b")
    expect(bob.locator("#typing")).to_have_text("alice is typing")
    expect(alice.locator("#typing")).to_have_text("")
    alice.locator("#composer-input").press_sequentially("ob!")
    alice.locator("#composer-input").press("Enter")

    expect(message(bob, "Hi bob!")).to_have_count(1)
    expect(bob.locator("#typing")).to_have_text("")  # a message ends the typing notice
    mine = message(alice, "Hi bob!")
    expect(mine).to_have_count(1)
    expect(mine).to_have_class(re.compile(r"\bmsg--own\b"))
    expect(mine).to_have_class(re.compile(r"\bmsg--delivered\b"))
    expect(message(bob, "Hi bob!")).not_to_have_class(re.compile(r"\bmsg--own\b"))

    # And back; Shift+Enter makes a new line instead of sending.
    box = bob.locator("#composer-input")
    box.press_sequentially("Hello alice")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("Hello alice\nsecond line")
    box.press("Enter")
    expect(message(alice, "second line")).to_have_count(1)
    expect(message(alice, "second line").locator(".msg__bubble")).to_have_text(
        "Hello alice\nsecond line"
    )
    expect(message(alice, "second line").locator(".msg__user")).to_have_text("bob")

    # Consecutive messages of one sender share one header.
    send(bob, "and a third")
    expect(message(alice, "and a third")).to_have_count(1)
    expect(message(alice, "and a third")).not_to_have_class(re.compile(r"\bmsg--first\b"))
    expect(alice.locator("#messages .msg.msg--first")).to_have_count(2)

    # Leaving: alice's tab closes, bob sees her go.
    alice.close()
    expect(bob.locator("#people .person")).to_have_count(1, timeout=20_000)
    watch.assert_clean()


def test_reload_shows_history_in_order_once(server: ChatServer, context: BrowserContext) -> None:
    watch = Watch()
    alice, bob = open_chats(context, server, watch, "alice", "bob")

    texts = ["one", "two", "three", "four from bob", "five"]
    for text in texts:
        send(bob if "bob" in text else alice, text)
        expect(message(alice, text)).to_have_count(1)
        expect(message(bob, text)).to_have_count(1)

    alice.reload()
    expect_connected(alice)
    expect(bubbles(alice)).to_have_text(texts)
    expect(alice.locator("#messages .msg--pending")).to_have_count(0)

    # Live messages after the reload are appended once, after the history.
    send(bob, "six")
    expect(bubbles(alice)).to_have_text([*texts, "six"])
    watch.assert_clean()


def test_server_restart_delivers_pending_message_exactly_once(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    alice, bob = open_chats(context, server, watch, "alice", "bob")
    send(alice, "before the restart")
    expect(message(bob, "before the restart")).to_have_count(1)

    status = server.stop()
    assert status == 0, f"server exited {status} on SIGTERM:\n{server.log_tail()}"

    for page in (alice, bob):
        expect(page.locator("#status")).to_have_attribute(
            "data-state", re.compile("reconnecting|offline")
        )
        expect(page.locator("#banner")).to_be_visible()

    send(alice, "written while offline")
    pending = message(alice, "written while offline")
    expect(pending).to_have_count(1)
    expect(pending).to_have_class(re.compile(r"\bmsg--pending\b"))

    server.start()

    for page in (alice, bob):
        expect_connected(page, timeout=30_000)
    delivered = message(alice, "written while offline")
    expect(delivered).to_have_class(re.compile(r"\bmsg--delivered\b"), timeout=15_000)
    expect(message(bob, "written while offline")).to_have_count(1)

    # A later message works as a barrier: once it is in, a duplicate would be too.
    send(bob, "after the restart")
    for page in (alice, bob):
        expect(message(page, "after the restart")).to_have_count(1)
        expect(message(page, "written while offline")).to_have_count(1)
        expect(page.locator("#messages .msg--pending")).to_have_count(0)
        expect(page.locator("#banner")).to_be_hidden()
    # The order is the server's, the same in both tabs.
    assert bubbles(alice).all_text_contents() == bubbles(bob).all_text_contents()
    watch.assert_clean(allow_websocket_errors=True)


def test_client_frames_follow_the_contract(server: ChatServer, context: BrowserContext) -> None:
    """auth first, join with since, send with a fresh cid, typing at most every 2 s,
    ping every 25 s."""
    watch = Watch()
    token = server.register("alice")["token"]
    page = watch.attach(context.new_page())
    page.goto(f"{server.url}/")
    page.evaluate(
        "(c) => localStorage.setItem('chat.clients', JSON.stringify([c]))",
        {"username": "alice", "token": token},
    )
    page.clock.install()
    sent: list[dict] = []
    page.on(
        "websocket", lambda socket: socket.on("framesent", lambda p: sent.append(json.loads(p)))
    )
    with page.expect_websocket() as ws_info:
        page.goto(f"{server.url}/chat/alice?room=lobby")
    ws = ws_info.value
    assert ws.url == f"ws://127.0.0.1:{server.port}/ws"
    expect_connected(page)

    box = page.locator("#composer-input")
    with ws.expect_event("framesent", lambda p: json.loads(p)["type"] == "typing"):
        box.press_sequentially("abc")
    page.clock.run_for(1000)
    box.press_sequentially("d")  # inside the 2 s quiet period: one notice when it ends
    with ws.expect_event("framesent", lambda p: json.loads(p)["type"] == "typing"):
        page.clock.run_for(1100)
    box.press_sequentially("ef")
    with ws.expect_event("framesent", lambda p: json.loads(p)["type"] == "send"):
        box.press("Enter")
    expect(message(page, "abcdef")).to_have_class(re.compile(r"\bmsg--delivered\b"))
    with ws.expect_event("framesent", lambda p: json.loads(p)["type"] == "ping"):
        page.clock.run_for(25_000)

    assert [f["type"] for f in sent] == ["auth", "join", "typing", "typing", "send", "ping"], sent
    assert sent[0] == {"type": "auth", "token": token}
    assert sent[1] == {"type": "join", "room": "lobby", "since": None}
    assert sent[2] == {"type": "typing", "room": "lobby"}
    send_frame = sent[4]
    assert send_frame["room"] == "lobby" and send_frame["text"] == "abcdef"
    assert 1 <= len(send_frame["cid"]) <= 64
    assert message(page, "abcdef").get_attribute("data-cid") == send_frame["cid"]
    watch.assert_clean()


def test_sending_faster_than_the_rate_limit_retries_each_message_once(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    speedy, calm = open_chats(context, server, watch, "speedy", "calm")

    texts = [f"burst {i:02d}" for i in range(20)]
    # Faster than any hand could type: all twenty in one task, well over the burst.
    speedy.evaluate(
        """(texts) => {
            const box = document.getElementById("composer-input");
            for (const text of texts) {
                box.value = text;
                document.getElementById("composer").requestSubmit();
            }
        }""",
        texts,
    )
    # The server refuses some (rate_limited); the composer says so...
    expect(speedy.locator("#composer-feedback")).to_contain_text("too fast")
    # ...and the refused ones are re-sent with their cids until all are in, once each.
    for page in (speedy, calm):
        expect(
            page.locator("#messages .msg.msg--delivered, #messages .msg:not(.msg--own)")
        ).to_have_count(20, timeout=40_000)
        for text in texts:
            expect(message(page, text)).to_have_count(1)
    expect(speedy.locator("#messages .msg--pending, #messages .msg--failed")).to_have_count(0)
    watch.assert_clean()


def test_refused_token_asks_to_register_again_without_reconnecting(
    server: ChatServer, page: Page
) -> None:
    page.goto(f"{server.url}/")
    page.evaluate(
        """() => localStorage.setItem("chat.clients",
            JSON.stringify([{username: "eve", token: "forged"}]))"""
    )
    page.clock.install()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.goto(f"{server.url}/chat/eve")
    gate = page.locator("#gate")
    expect(gate).to_be_visible()
    expect(gate).to_contain_text("register again")
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")
    expect(page.locator("#composer-input")).to_be_disabled()
    page.clock.run_for(60_000)  # a minute of backoff timers: none may fire a reconnect
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")
    assert len(sockets) == 1


def test_markup_and_script_urls_stay_inert_text(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    mallory, victim = open_chats(context, server, watch, "mallory", "victim")

    attacks = [
        "<img src=x onerror=alert(1)>",
        "javascript:alert(1)",
        '<a href="javascript:alert(2)">click</a>',
        "<script>alert(3)</script>",
        "see https://example.com/docs?q=a&b=(c). <b>bold</b>",
    ]
    for text in attacks:
        send(mallory, text)
    for page in (mallory, victim):
        for text in attacks:
            expect(message(page, text)).to_have_count(1)
        listing = page.locator("#messages")
        expect(listing.locator("img")).to_have_count(0)
        expect(listing.locator("script")).to_have_count(0)
        expect(listing.locator('a[href^="javascript" i]')).to_have_count(0)
        # Only the http(s) URL became a link, and a safe one.
        links = listing.locator("a")
        expect(links).to_have_count(1)
        expect(links).to_have_attribute("href", "https://example.com/docs?q=a&b=(c)")
        expect(links).to_have_text("https://example.com/docs?q=a&b=(c)")
        expect(links).to_have_attribute("rel", "noopener noreferrer")
        expect(links).to_have_attribute("target", "_blank")
        expect(message(page, "<img").locator(".msg__bubble")).to_have_text(
            "<img src=x onerror=alert(1)>"
        )
        expect(message(page, "<b>bold").locator("b")).to_have_count(0)
    watch.assert_clean()


def test_linkify_makes_only_http_urls_into_links(server: ChatServer, page: Page) -> None:
    page.goto(f"{server.url}/")
    cases = page.evaluate(
        """async (texts) => {
            const { linkify } = await import("/static/js/text.js");
            return texts.map((text) => {
                const box = document.createElement("div");
                box.append(linkify(text));
                return {
                    text: box.textContent,
                    links: [...box.querySelectorAll("a")]
                        .map((a) => [a.getAttribute("href"), a.textContent]),
                    elements: box.querySelectorAll("*").length,
                };
            });
        }""",
        [
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1) data:text/html,<script>alert(1)</script>",
            "see https://example.com/a.",
            "(https://en.wikipedia.org/wiki/Foo_(bar)) and HTTP://EXAMPLE.COM!",
            "http:// alone",
            "vbscript:x https://ok.example/path?x=1&y=2, done",
            "<img src=x onerror=alert(1)>http://x.test/<b>",
        ],
    )
    assert [c["links"] for c in cases] == [
        [],
        [],
        [["https://example.com/a", "https://example.com/a"]],
        [
            ["https://en.wikipedia.org/wiki/Foo_(bar)", "https://en.wikipedia.org/wiki/Foo_(bar)"],
            ["http://example.com/", "HTTP://EXAMPLE.COM"],
        ],
        [],
        [["https://ok.example/path?x=1&y=2", "https://ok.example/path?x=1&y=2"]],
        [["http://x.test/", "http://x.test/"]],
    ]
    # The text itself is never altered, and nothing but <a> is ever created.
    assert cases[6]["text"] == "<img src=x onerror=alert(1)>http://x.test/<b>"
    assert all(c["elements"] == len(c["links"]) for c in cases)


def test_scroll_back_loads_older_messages_without_jumping(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    texts = [f"seed message {i:03d}" for i in range(120)]
    seed_messages(server, "general", texts)
    seed_clients(context, server, watch, "reader", "writer")
    reader = open_chat(context, server, "reader", watch)

    # The latest 50 first, scrolled to the bottom.
    expect(bubbles(reader)).to_have_count(50)
    expect(bubbles(reader).first).to_have_text(texts[70])
    expect(message(reader, texts[119])).to_be_in_viewport()

    anchor = message(reader, texts[70])
    timeline = reader.locator("#timeline")
    timeline.evaluate("el => { el.scrollTop = 0; }")
    expect(bubbles(reader)).to_have_count(100)
    # What the user was looking at stays where it was.
    expect(anchor).to_be_in_viewport()
    top = anchor.bounding_box()["y"]
    timeline_top = timeline.bounding_box()["y"]
    assert top - timeline_top < 200, "the view jumped instead of keeping its place"

    timeline.evaluate("el => { el.scrollTop = 0; }")
    expect(bubbles(reader)).to_have_count(120)
    expect(reader.locator("#history-status")).to_have_text("This is the beginning of #general.")
    expect(bubbles(reader)).to_have_text(texts)

    # Scrolled up, a new message shows a cue instead of yanking the view down.
    writer = open_chat(context, server, "writer", watch)
    send(writer, "while you were reading")
    cue = reader.locator("#new-messages")
    expect(cue).to_be_visible()
    expect(cue).to_contain_text("1 new message")
    cue.click()
    expect(message(reader, "while you were reading")).to_be_in_viewport()
    expect(cue).to_be_hidden()
    watch.assert_clean()


def test_registration_errors_rooms_and_missing_token(
    server: ChatServer, context: BrowserContext
) -> None:
    watch = Watch()
    home = watch.attach(context.new_page())
    home.goto(f"{server.url}/")
    register(home, "carol")

    error = home.locator("#username-error")
    home.get_by_label("Username").fill("bad name!")
    home.get_by_role("button", name="Create").click()
    expect(error).to_be_visible()
    expect(home.get_by_label("Username")).to_have_attribute("aria-invalid", "true")

    # The server's answer for a taken name (case-insensitively) is shown as it is.
    server_message = _post_error(home, server, "CAROL")
    home.get_by_label("Username").fill("CAROL")
    home.get_by_role("button", name="Create").click()
    expect(error).to_have_text(server_message)
    expect(home.locator("#clients .client")).to_have_count(1)

    # Forgetting removes the client from this browser.
    register(home, "dave")
    home.locator('#clients .client[data-username="dave"]').get_by_role(
        "button", name="Forget dave"
    ).click()
    expect(home.locator("#clients .client")).to_have_count(1)

    chat = open_chat(context, server, "carol", watch)
    # Over-long text is refused at the composer, with the reason next to it.
    chat.locator("#composer-input").fill("x" * 2001)
    chat.locator("#composer-input").press("Enter")
    expect(chat.locator("#composer-feedback")).to_contain_text("limit is 2,000")
    expect(chat.locator("#composer-count")).to_have_text("2,001/2,000")
    expect(chat.locator("#composer-input")).to_have_value("x" * 2001)
    expect(chat.locator("#messages .msg")).to_have_count(0)
    chat.locator("#composer-input").fill("")

    form_input = chat.get_by_label("Join a room")
    form_input.fill("Not A Room!")
    chat.get_by_role("button", name="Go").click()
    expect(chat.locator("#join-room-error")).to_be_visible()
    form_input.fill("random")
    form_input.press("Enter")
    expect(chat).to_have_url(f"{server.url}/chat/carol?room=random")
    expect_connected(chat)
    expect(chat.locator("#room-title")).to_have_text("#random")
    expect(chat.locator('#room-list a[aria-current="page"]')).to_have_text("random")

    # A client this browser has no token for gets a way back, not a broken page.
    stranger = watch.attach(context.new_page())
    stranger.goto(f"{server.url}/chat/nobody")
    expect(stranger.locator("#gate")).to_be_visible()
    expect(stranger.locator("#gate").get_by_role("link")).to_have_attribute("href", "/")
    expect(stranger.locator("#status")).to_have_attribute("data-state", "offline")
    _assert_only_409_logged(watch)


def _post_error(page: Page, server: ChatServer, username: str) -> str:
    """What the server says when this username is registered again."""
    result = page.evaluate(
        """async (name) => {
            const r = await fetch("/api/clients", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({username: name})});
            return {status: r.status, body: await r.json()};
        }""",
        username,
    )
    assert result["status"] == 409, result
    return result["body"]["error"]["message"]


def _assert_only_409_logged(watch: Watch) -> None:
    # Chromium logs every failed fetch (the 409s above) as a console error.
    errors = [e for e in watch.errors if "409" not in e]
    assert errors == [], errors
    assert watch.dialogs == []


def _conversation(server: ChatServer, context: BrowserContext, watch: Watch) -> tuple[Page, Page]:
    maya, theo, sam = open_chats(context, server, watch, "maya", "theo", "sam")
    lines = [
        (theo, "Morning! Did the deploy go out?"),
        (maya, "Yes, about ten minutes ago 🚀"),
        (maya, "Release notes: https://example.com/releases/2.4"),
        (sam, "Nice. The new reconnect logic already saved me once on the train 🙌"),
        (theo, "Great, I'll keep an eye on the dashboards."),
        (theo, "Lunch at 12:30?"),
        (maya, "Sounds good, see you there."),
    ]
    for page, text in lines:
        send(page, text)
        expect(message(maya, text)).to_have_class(re.compile(r"\bmsg--delivered\b"))
    theo.locator("#composer-input").press_sequentially("I'm in")
    expect(maya.locator("#typing")).to_have_text("theo is typing")
    return maya, sam


def _phone_with_clients_of(
    home: Page, browser: Browser, server: ChatServer, watch: Watch, **options
) -> BrowserContext:
    """A phone-sized touch context holding the same stored clients as `home`."""
    phone = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        **options,
    )
    seed = watch.attach(phone.new_page())
    seed.goto(f"{server.url}/")
    seed.evaluate(
        "(c) => localStorage.setItem('chat.clients', JSON.stringify(c))",
        home.evaluate("() => JSON.parse(localStorage.getItem('chat.clients'))"),
    )
    return phone


def test_screenshots(server: ChatServer, browser: Browser) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    watch = Watch()

    desktop = browser.new_context(viewport={"width": 1280, "height": 800})
    maya, _ = _conversation(server, desktop, watch)
    maya.locator("#composer-input").fill("")
    maya.screenshot(path=SCREENSHOTS / "chat-desktop.png")

    home = desktop.pages[0]
    home.goto(f"{server.url}/")
    expect(home.locator("#clients .client")).to_have_count(3)
    home.screenshot(path=SCREENSHOTS / "register.png")

    phone = _phone_with_clients_of(home, browser, server, watch)
    on_phone = open_chat(phone, server, "sam", watch)
    expect(bubbles(on_phone)).to_have_count(7)
    expect(message(on_phone, "Sounds good")).to_be_in_viewport()
    on_phone.screenshot(path=SCREENSHOTS / "chat-phone.png")

    # Nothing may overflow sideways at phone width.
    for viewport_width in (390, 375):
        on_phone.set_viewport_size({"width": viewport_width, "height": 844})
        width = on_phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= viewport_width, f"page is {width}px wide at {viewport_width}px"

    dark = _phone_with_clients_of(home, browser, server, watch, color_scheme="dark")
    dark_page = open_chat(dark, server, "maya", watch)
    expect(bubbles(dark_page)).to_have_count(7)
    dark_page.screenshot(path=SCREENSHOTS / "chat-phone-dark.png")

    for path in ("chat-desktop.png", "chat-phone.png", "chat-phone-dark.png", "register.png"):
        assert (SCREENSHOTS / path).stat().st_size > 10_000
    for ctx in (desktop, phone, dark):
        ctx.close()
    watch.assert_clean()
