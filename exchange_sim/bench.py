"""Load generator: how many signed create/fetch requests per second the simulator serves.

``run_load(base_url, seconds, concurrency)`` drives ``concurrency`` concurrent
clients, each alternating a market order (buy, then sell, so positions stay
near flat) with a fetch of that order, on Binance and Bybit in turn. Requests
are signed the way the exchanges expect (HMAC-SHA256), without ccxt, so the
client spends its CPU on HTTP rather than on ccxt's bookkeeping.

Run it against a simulator without faults; it trades real simulated orders
(minimum BTC size) and leaves them in the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import multiprocessing
import os
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import orjson

API_KEY = "bench-key"
SECRET = b"bench-secret"


@dataclass
class _Tally:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0


def _binance_signed(params: dict[str, str]) -> str:
    params["timestamp"] = str(int(time.time() * 1000))
    query = urlencode(params)
    signature = hmac.new(SECRET, query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}"


def _bybit_headers(payload: str) -> dict[str, str]:
    timestamp = str(int(time.time() * 1000))
    signature = hmac.new(
        SECRET, f"{timestamp}{API_KEY}5000{payload}".encode(), hashlib.sha256
    ).hexdigest()
    return {
        "X-BAPI-API-KEY": API_KEY,
        "X-BAPI-TIMESTAMP": timestamp,
        "X-BAPI-RECV-WINDOW": "5000",
        "X-BAPI-SIGN": signature,
        "Content-Type": "application/json",
    }


async def _timed(tally: _Tally, request) -> dict | list | None:
    started = time.perf_counter()
    try:
        async with request as response:
            body = await response.read()
            ok = response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        tally.errors += 1
        return None
    tally.latencies_s.append(time.perf_counter() - started)
    if not ok:
        tally.errors += 1
        return None
    decoded = orjson.loads(body)
    if isinstance(decoded, dict) and decoded.get("retCode", 0) != 0:
        tally.errors += 1
        return None
    return decoded


async def _binance_round(session: aiohttp.ClientSession, base: str, side: str, tally: _Tally):
    headers = {"X-MBX-APIKEY": API_KEY, "Content-Type": "application/x-www-form-urlencoded"}
    body = _binance_signed(
        {
            "symbol": "BTCUSDT",
            "side": side.upper(),
            "type": "MARKET",
            "quantity": "0.005",
            "newOrderRespType": "RESULT",
        }
    )
    created = await _timed(tally, session.post(f"{base}/fapi/v1/order", data=body, headers=headers))
    if not isinstance(created, dict):
        return
    query = _binance_signed({"symbol": "BTCUSDT", "orderId": str(created["orderId"])})
    await _timed(tally, session.get(f"{base}/fapi/v1/order?{query}", headers=headers))


async def _bybit_round(session: aiohttp.ClientSession, base: str, side: str, tally: _Tally):
    payload = json.dumps(
        {
            "category": "linear",
            "symbol": "BTCUSDT",
            "side": side.capitalize(),
            "orderType": "Market",
            "qty": "0.005",
        }
    )
    created = await _timed(
        tally,
        session.post(f"{base}/v5/order/create", data=payload, headers=_bybit_headers(payload)),
    )
    if not isinstance(created, dict):
        return
    query = urlencode(
        {"category": "linear", "symbol": "BTCUSDT", "orderId": created["result"]["orderId"]}
    )
    await _timed(
        tally,
        session.get(f"{base}/v5/order/realtime?{query}", headers=_bybit_headers(query)),
    )


async def _client(
    session: aiohttp.ClientSession, base: str, index: int, deadline: float, tally: _Tally
) -> None:
    rounds = (_binance_round, _bybit_round)
    sides = itertools.cycle(("buy", "sell"))
    for turn in itertools.count(index):
        if time.perf_counter() >= deadline:
            return
        await rounds[turn % 2](session, base, next(sides), tally)


async def _drive(base_url: str, seconds: float, concurrency: int, start_at: float) -> dict:
    base = base_url.rstrip("/")
    tally = _Tally()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    # No cookies, no compression: work a trading client does not need per request.
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as session:
        # Every process starts at the same wall-clock moment, after its imports.
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(_client(session, base, i, deadline, tally) for i in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    return {"latencies_s": tally.latencies_s, "errors": tally.errors, "elapsed_s": elapsed}


def _drive_in_process(base_url: str, seconds: float, concurrency: int, start_at: float) -> dict:
    try:
        import uvloop
    except ImportError:  # plain asyncio works, only the client is slower
        return asyncio.run(_drive(base_url, seconds, concurrency, start_at))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(base_url, seconds, concurrency, start_at))


def _server_counters(base_url: str) -> tuple[int, float] | None:
    """(requests served, CPU seconds used) from the simulator's stats, if it answers."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/_sim/stats", timeout=5) as answer:
            stats = orjson.loads(answer.read())
        return int(stats["total"]), float(stats["process"]["cpu_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an older or remote simulator: skip the server-side figures


def run_load(
    base_url: str, seconds: float, concurrency: int, processes: int | None = None
) -> dict[str, float | int]:
    """Drive mixed create/fetch load for ``seconds``; return throughput and latency.

    The clients are spread over ``processes`` processes (default: two, or one
    on a single core), because one Python process cannot sign and parse fast
    enough to saturate the server. Keys:
    ``requests`` (answered), ``req_per_s``, ``errors`` (non-200, non-zero
    ``retCode``, connection errors), ``p50_ms``, ``p99_ms``, ``seconds``,
    ``concurrency``, ``processes``; and, read from the simulator's stats,
    ``server_cpu_ms_per_request`` and ``server_req_per_s_per_core`` (its own
    cost, which does not depend on how busy the machine is).
    """
    if seconds <= 0 or concurrency < 1:
        raise ValueError("seconds must be > 0 and concurrency >= 1")
    if processes is None:
        processes = min(2, os.cpu_count() or 1)
    processes = max(1, min(processes, concurrency))
    shares = [
        concurrency // processes + (1 if i < concurrency % processes else 0)
        for i in range(processes)
    ]
    before = _server_counters(base_url)
    if processes == 1:
        results = [_drive_in_process(base_url, seconds, concurrency, time.time())]
    else:
        # Spawned (not forked) workers: the caller may be a threaded process.
        start_at = time.time() + 1.5
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            futures = [
                pool.submit(_drive_in_process, base_url, seconds, share, start_at)
                for share in shares
            ]
            results = [future.result() for future in futures]
    latencies = sorted(latency for result in results for latency in result["latencies_s"])
    elapsed = max(result["elapsed_s"] for result in results)

    def percentile(fraction: float) -> float:
        if not latencies:
            return 0.0
        index = min(len(latencies) - 1, int(fraction * len(latencies)))
        return round(latencies[index] * 1000, 2)

    result: dict[str, float | int] = {
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "errors": sum(result["errors"] for result in results),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "seconds": round(elapsed, 2),
        "concurrency": concurrency,
        "processes": processes,
    }
    after = _server_counters(base_url)
    if before is not None and after is not None and after[0] > before[0]:
        cpu_per_request_s = (after[1] - before[1]) / (after[0] - before[0])
        result["server_cpu_ms_per_request"] = round(cpu_per_request_s * 1000, 3)
        if cpu_per_request_s > 0:
            # What one core of simulator could serve if the clients cost nothing.
            result["server_req_per_s_per_core"] = round(1 / cpu_per_request_s)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Load the exchange simulator.")
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    arguments = parser.parse_args()
    print(json.dumps(run_load(arguments.url, arguments.seconds, arguments.concurrency)))
