"""``python manage.py render_worker [--workers N]``: serve render requests from the channel layer.

Runs on any host that reaches Redis, the clinical database (as the read-only
``gateway_render`` role) and the encrypted object store with the storage keys.
It starts ``N`` local render processes (the same :class:`~rendering.workers.RenderPool`
as local mode, with its crash replacement) and takes a request off the ``render``
channel only when one of them is free. SIGTERM/SIGINT finish the requests in hand
and exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from rendering.pool import local_pool_build
from rendering.remote import render_key, render_serve


class Command(BaseCommand):
    help = ("Serve render/describe/probe requests from the render channel (GATEWAY_RENDER_MODE=remote "
            "servers send them); run one per render host.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=0,
                            help="render processes (default GATEWAY_RENDER_WORKERS, else one per core)")
        parser.add_argument("--channel", default=settings.RENDER_CHANNEL)
        parser.add_argument("--name", default="", help="name in logs and replies (default host:pid)")

    def handle(self, *args: object, **options: object) -> None:
        workers = int(options["workers"] or 0) or None  # type: ignore[call-overload]
        name = str(options["name"] or "") or f"{socket.gethostname()}:{os.getpid()}"
        pool = local_pool_build(size=workers).start()
        try:
            asyncio.run(self._serve(pool, str(options["channel"]), name))
        finally:
            pool.close()

    async def _serve(self, pool, channel: str, name: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write(f"render worker {name}: {pool.size} render process(es) serving "
                          f"channel {channel!r}")
        self.stdout.flush()
        stats = await render_serve(pool=pool, key=render_key(), channel=channel,
                                   layer_alias=settings.RENDER_CHANNEL_LAYER, name=name, stop=stop)
        self.stdout.write(f"render worker {name}: stopped after {stats.served} request(s)")
