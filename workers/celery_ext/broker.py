"""The Redis broker transport: kombu's, with one reused client per channel.

kombu's Redis channel builds a new ``redis.Redis`` object for every short
command it sends outside its poll loop: each acknowledgement, each unacked
bookkeeping step and each task event published (Flower's). Building one costs
about 60 µs of CPU (its reply-callback tables), several times per task. A
``redis.Redis`` object holds no connection of its own (every command checks
one out of the pool and returns it), so one object per channel and pool serves
every worker thread; the pool, its reconnects and its errors are kombu's as before.

It also keeps a worker consuming after the broker restarts with tasks in flight
(``Channel._connparams``): kombu 5.7 with Celery 5.7 took the whole consumer
down there, for good, on an ``AttributeError``.

``rediss://`` (TLS) runs on the same channel through ``TlsTransport``. Its TLS
options are Celery's ``broker_use_ssl`` (``workers.app`` always sets them for a
rediss:// URL); without any, the server's certificate is still verified, against
the system's CAs, where kombu's own rediss transport would skip the check.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

# The URL schemes these transports serve; others (sentinel://) keep kombu's own.
SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    _short_command_client: Any = None
    _known_connparams: dict[bool, dict[str, Any]] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._short_command_client
        # A rebuilt pool (kombu drops its pools after a fork) gets a new client.
        if client is None or client.connection_pool is not self.pool:
            client = self._short_command_client = super()._create_client()
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's connection parameters, remembered for a close after the connection is gone.

        On a lost broker connection Celery's consumer first ``collect``s the
        connection, which detaches the transport's client (where kombu reads the
        Redis address), and then closes it. When the first close of the channel
        stopped early (a BRPOP was pending on the dead socket), the second one
        goes on to return the channel's unacknowledged messages, needs a new
        pool for that, and kombu's parameters raised ``AttributeError`` on the
        detached client. Celery counts that as unrecoverable: the worker process
        stayed up and never consumed again. With the parameters remembered the
        close returns the messages when Redis is back, or fails with a
        connection error that kombu expects, and the consumer reconnects.
        """
        known = self._known_connparams
        if known is None:
            known = self._known_connparams = {}
        if self.connection.client is None and asynchronous in known:
            return dict(known[asynchronous])
        params = super()._connparams(asynchronous=asynchronous)
        known[asynchronous] = params
        return dict(params)


class Transport(kombu_redis.Transport):
    Channel = Channel


class TlsTransport(Transport):
    """``rediss://``: the channel above over TLS, the server's certificate verified."""

    def __init__(self, client: Any, **kwargs: Any) -> None:
        if not client.ssl:
            client.ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        super().__init__(client, **kwargs)


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for ``broker_url``: this module's for Redis URLs."""
    scheme = urlsplit(broker_url).scheme
    if scheme == "redis":
        return f"{__name__}:Transport"
    if scheme == "rediss":
        return f"{__name__}:TlsTransport"
    return None
