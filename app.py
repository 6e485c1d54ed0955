"""Run one chat server instance: read settings from the environment, build the app, serve."""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp import web

from chat import create_app, keys
from chat.logs import configure
from chat.settings import Settings, SettingsError


def main() -> None:
    """Entry point of `python app.py`."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"chat: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(settings.log_level, settings.log_format, settings.instance_id)
    log = logging.getLogger("chat")
    app = create_app(settings)
    log.info(
        "chat instance %s on %s bus=%s history=%s",
        settings.instance_id,
        " ".join(
            f"http://[{h}]:{settings.port}" if ":" in h else f"http://{h}:{settings.port}"
            for h in settings.hosts
        ),
        app[keys.BUS].name,
        app[keys.HISTORY].name,
    )
    if settings.secret_key_generated and (settings.redis_url or settings.kafka_bootstrap_servers):
        log.warning(
            "SECRET_KEY is not set: tokens from this instance will not work on others "
            "or after a restart; set one shared SECRET_KEY for the whole deployment"
        )
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        run(app, settings, loop_factory)
    except OSError as exc:
        print(f"chat: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run(app: web.Application, settings: Settings, loop_factory: Any) -> None:
    """Serve until SIGTERM or SIGINT."""
    web.run_app(
        app,
        host=settings.hosts,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        print=None,
        access_log=None,
        handle_signals=True,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
