"""The Redis broker transport: kombu's, with one reused client per channel.

kombu's Redis channel builds a new ``redis.Redis`` object for every short
command it sends outside its poll loop: each acknowledgement, each unacked
bookkeeping step and each task event published (Flower's). Building one costs
about 60 µs of CPU (its reply-callback tables), several times per task. A
``redis.Redis`` object holds no connection of its own (every command checks
one out of the pool and returns it), so one object per channel and pool serves
every worker thread; the pool, its reconnects and its errors are kombu's as before.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

# The URL scheme this transport serves. Others keep kombu's own transport:
# rediss:// (kombu checks its TLS settings by that transport's name), sentinel://.
SCHEMES = ("redis",)


class Channel(kombu_redis.Channel):
    _short_command_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._short_command_client
        # A rebuilt pool (kombu drops its pools after a fork) gets a new client.
        if client is None or client.connection_pool is not self.pool:
            client = self._short_command_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for ``broker_url``: this module's for Redis URLs."""
    if urlsplit(broker_url).scheme in SCHEMES:
        return f"{__name__}:Transport"
    return None
