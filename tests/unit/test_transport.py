"""ExchangeSession (workers/exchange/transport.py) against a real local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.exchange.transport import ExchangeSession


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as an exchange API
    seen: list[tuple[str, str, bytes, str | None, int]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.seen.append(
            (
                self.command,
                self.path,
                body,
                self.headers.get("X-Mbx-Apikey"),
                self.client_address[1],
            )
        )
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _session() -> ExchangeSession:
    session = ExchangeSession()
    session.trust_env = False
    return session


def test_a_call_arrives_as_sent_and_the_connection_is_kept(server: str) -> None:
    session = _session()
    for number in (1, 2):
        response = session.request(
            "POST",
            f"{server}/fapi/v1/order?signature=abc",
            data=f"quantity={number}".encode(),
            headers={"X-MBX-APIKEY": "key", "Content-Type": "application/x-www-form-urlencoded"},
            timeout=5,
            verify=True,
        )
        assert (response.status_code, response.json()) == (200, {"ok": True})
    first, second = _Recorder.seen
    assert first[:4] == ("POST", "/fapi/v1/order?signature=abc", b"quantity=1", "key")
    assert second[2] == b"quantity=2"
    # the second call reused the first call's connection
    assert first[4] == second[4]


def test_a_redirect_is_answered_to_the_caller_not_followed(server: str) -> None:
    response = _session().request("POST", f"{server}/moved", data=b"a=1", timeout=5)

    assert response.status_code == 302
    assert [path for _, path, *_ in _Recorder.seen] == ["/moved"]


def test_a_call_with_query_params_takes_requests_own_path(server: str) -> None:
    response = _session().request("GET", f"{server}/fapi/v1/time", params={"a": "1"}, timeout=5)

    assert response.status_code == 200
    assert [path for _, path, *_ in _Recorder.seen] == ["/fapi/v1/time?a=1"]
