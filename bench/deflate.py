"""What permessage-deflate would cost our fan-out: per-recipient compression, measured.

Browsers offer permessage-deflate and aiohttp accepts it by default. Each socket then has
its own deflate context, so a broadcast frame must be compressed once per recipient and
can no longer be shared. This measures that cost against the shared-bytes path for the
frames the chat actually sends.

    python bench/deflate.py
"""

from __future__ import annotations

import json
import secrets
import time
import zlib

from chat import protocol
from chat.connection import wire_frame

RECIPIENTS = 1000
ROUNDS = 20


def frame(text: str) -> bytes:
    message = protocol.Message(
        room="general",
        id="fhfvltnjfr7kpjs3fhsq",
        user="alice",
        text=text,
        ts=1796405169414,
        cid="6f1c0d8e-3b7a-4d2e-9f1a-2b8c4e5d6a7b",
    )
    return protocol.encode(message)


def per_recipient_deflate(text: str) -> tuple[float, float]:
    """Seconds per recipient and mean compressed size, one context per socket (as aiohttp).

    Every round is a different message (a room's stream), so the context's memory of
    earlier frames helps as much as it would in a real room, and no more.
    """
    payloads = [frame(f"{text} {secrets.token_hex(8)} #{n}") for n in range(ROUNDS)]
    contexts = [zlib.compressobj(wbits=-zlib.MAX_WBITS) for _ in range(RECIPIENTS)]
    sizes: list[int] = []
    started = time.perf_counter()
    for payload in payloads:
        for ctx in contexts:
            out = ctx.compress(payload) + ctx.flush(zlib.Z_SYNC_FLUSH)
        sizes.append(len(out) - 4)  # permessage-deflate drops the sync flush's tail
    elapsed = time.perf_counter() - started
    return elapsed / (ROUNDS * RECIPIENTS), sum(sizes) / len(sizes)


def shared_frame(payload: bytes) -> float:
    """Seconds per recipient for framing once and sharing the bytes."""
    sink: list[bytes] = []
    started = time.perf_counter()
    for _ in range(ROUNDS):
        wire = wire_frame(payload)
        for _ in range(RECIPIENTS):
            sink.append(wire)
        sink.clear()
    return (time.perf_counter() - started) / (ROUNDS * RECIPIENTS)


def main() -> None:
    rows = []
    for label, text in (
        ("short (20 chars)", "see you at 12:30 ok?"),
        (
            "typical (120 chars)",
            "Release notes are up: the reconnect logic now resumes with since, "
            "so nobody misses anything after a deploy. Shout if not.",
        ),
        ("long (2,000 chars)", ("lorem ipsum dolor sit amet " * 80)[:2000]),
    ):
        payload = frame(text)
        cost, size = per_recipient_deflate(text)
        rows.append(
            {
                "frame": label,
                "bytes": len(payload),
                "deflated_bytes": round(size),
                "deflate_us_per_recipient": round(cost * 1e6, 2),
                "shared_us_per_recipient": round(shared_frame(payload) * 1e6, 3),
            }
        )
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
