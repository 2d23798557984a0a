"""``execq bench`` and ``execq chaos``; registered on the main group with ``cli.add_command``.

Both print a short human summary, or with ``--json`` one JSON object as the
last line. Exit codes follow ``workers.cli``: 0 targets met / audit clean,
1 a target missed or the audit found a problem, 2 services unusable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

REDIS_URL_HELP = (
    "An empty Redis database to run on (flushed at the end) instead of a private redis-server."
)


def _emit(result: dict[str, Any], as_json: bool, summary: list[str]) -> None:
    if not as_json:
        for line in summary:
            click.echo(line)
        return
    click.echo(json.dumps(result, default=str))


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the run stops its processes and drops its database."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _services_error(exc: BaseException) -> None:
    click.echo(f"execq: {exc}", err=True)
    sys.exit(EXIT_USAGE)


# --- bench ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--orders",
    type=click.IntRange(1),
    default=2000,
    show_default=True,
    help="Orders (and no-op tasks) in the throughput phase.",
)
@click.option(
    "--latency-ms",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Exchange latency injected by the simulator (latency fault rule).",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1),
    default=50.0,
    show_default=True,
    help="Orders per second in the paced latency phase (open loop).",
)
@click.option(
    "--rate-seconds",
    type=click.FloatRange(0.5),
    default=10.0,
    show_default=True,
    help="Length of the paced latency phase.",
)
@click.option(
    "--workers",
    "worker_count",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=None,
    help="Threads (or processes) per worker; default EXECQ_WORKER_CONCURRENCY.",
)
@click.option(
    "--pool",
    type=click.Choice(["threads", "prefork", "solo"]),
    default="threads",
    show_default=True,
)
@click.option("--redis-url", help=REDIS_URL_HELP)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep logs here instead of a temporary directory.",
)
@click.option("--sim-only", is_flag=True, help="Measure the exchange simulator alone.")
@click.option("--sim-seconds", type=click.FloatRange(1), default=10.0, show_default=True)
@click.option("--sim-concurrency", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--ingress", is_flag=True, help="Measure the HTTP API against the Python outbox producer."
)
@click.option(
    "--ingress-concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Requests (and producer threads) in flight in the --ingress throughput phase.",
)
@click.option(
    "--ingress-rate",
    type=click.FloatRange(1),
    default=100.0,
    show_default=True,
    help="Requests per second in the --ingress latency phase (open loop).",
)
@click.option("--skip-throughput", is_flag=True, help="Only the baseline and the paced phase.")
@click.option("--skip-latency", is_flag=True, help="Only the baseline and the throughput phase.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last.")
def bench(
    orders: int,
    latency_ms: int,
    rate: float,
    rate_seconds: float,
    worker_count: int,
    concurrency: int | None,
    pool: str,
    redis_url: str | None,
    workdir: Path | None,
    sim_only: bool,
    sim_seconds: float,
    sim_concurrency: int,
    ingress: bool,
    ingress_concurrency: int,
    ingress_rate: float,
    skip_throughput: bool,
    skip_latency: bool,
    as_json: bool,
) -> None:
    """Benchmark the order pipeline against a no-op Celery task (and the simulator alone).

    Runs on a private redis-server and its own PostgreSQL database on the
    DATABASE_URL server (created and dropped), with its own simulator and
    workers. Exit 1 when a speed target is missed (docs/benchmarks.md).
    """
    from workers.harness.bench import RedisNotEmpty, run_bench, targets
    from workers.harness.services import ServicesUnavailable
    from workers.settings import load_settings

    if ingress:
        _stop_on_sigterm()
        _bench_ingress(
            orders, ingress_concurrency, ingress_rate, rate_seconds, redis_url, workdir, as_json
        )
        return

    options: dict[str, Any] = {
        "orders": orders,
        "latency_ms": latency_ms,
        "rate": rate,
        "rate_seconds": rate_seconds,
        "workers": worker_count,
        "concurrency": concurrency or load_settings().worker_concurrency,
        "pool": pool,
        "redis_url": redis_url,
        "workdir": workdir,
        "sim_only": sim_only,
        "sim_seconds": sim_seconds,
        "sim_concurrency": sim_concurrency,
        "skip_throughput": skip_throughput,
        "skip_latency": skip_latency,
    }
    _stop_on_sigterm()
    try:
        result = run_bench(**options)
    except (ServicesUnavailable, RedisNotEmpty) as exc:
        _services_error(exc)
        return
    result["targets"] = targets(result)
    missed = [name for name, check in result["targets"].items() if check["met"] is False]
    _emit(result, as_json, _bench_summary(result))
    sys.exit(EXIT_CHECK_FAILED if missed else EXIT_OK)


def _bench_ingress(
    signals: int,
    concurrency: int,
    rate: float,
    rate_seconds: float,
    redis_url: str | None,
    workdir: Path | None,
    as_json: bool,
) -> None:
    from workers.harness.bench import RedisNotEmpty, ingress_targets, run_ingress_bench
    from workers.harness.services import ServicesUnavailable

    try:
        result = run_ingress_bench(
            signals=signals,
            concurrency=concurrency,
            rate=rate,
            rate_seconds=rate_seconds,
            redis_url=redis_url,
            workdir=workdir,
        )
    except (ServicesUnavailable, RedisNotEmpty) as exc:
        _services_error(exc)
        return
    result["targets"] = ingress_targets(result)
    summary = [
        f"accepted signals/s with {result['concurrency']} in flight: API {result['api_per_s']}, "
        f"Python producer {result['producer_per_s']} (ratio {result['ratio']})",
        f"request latency at {result['latency_rate']}/s: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; with a worker executing them: "
        f"p50 {result['with_worker_p50_ms']} ms, p99 {result['with_worker_p99_ms']} ms",
    ]
    for name, check in result["targets"].items():
        summary.append(f"target {name}: {'met' if check['met'] else 'MISSED'} ({check['detail']})")
    _emit(result, as_json, summary)
    missed = [name for name, check in result["targets"].items() if check["met"] is False]
    sys.exit(EXIT_CHECK_FAILED if missed else EXIT_OK)


def _bench_summary(result: dict[str, Any]) -> list[str]:
    if result.get("mode") == "sim-only":
        lines = [
            f"simulator: {result['req_per_s']} req/s over {result['seconds']} s "
            f"({result['requests']} requests, {result['errors']} errors, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms)"
        ]
    else:
        lines = [
            f"latency injected: {result['latency_ms']} ms; {result['workers']} worker(s) x "
            f"{result['concurrency']} {result['pool']}",
            f"baseline no-op: {result['baseline_noop_per_s']} tasks/s",
        ]
        if "orders_per_s" in result:
            lines.append(
                f"orders: {result['orders']} at {result['orders_per_s']} orders/s "
                f"(ratio {result['ratio']}; verified {result['verified_per_s']}/s)"
            )
            lines.append(
                f"floor, a task that only creates the order: {result['floor_create_per_s']}/s "
                f"(ratio {result['floor_ratio']})"
            )
        if "p99_ms" in result:
            lines.append(
                f"enqueue -> exchange ack at {result['latency_rate']}/s: "
                f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
                f"(floor: p50 {result['floor_p50_ms']} ms, p99 {result['floor_p99_ms']} ms)"
            )
        lines.append(f"worker peak RSS: {result['worker_rss_mb']} MB")
    for name, check in result.get("targets", {}).items():
        verdict = {True: "met", False: "MISSED", None: "n/a"}[check["met"]]
        lines.append(f"target {name}: {verdict} ({check['detail']})")
    return lines


# --- chaos ----------------------------------------------------------------------------------


@click.command()
@click.option("--signals", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--workers", "worker_count", type=click.IntRange(1), default=2, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Threads per worker.",
)
@click.option(
    "--kills",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Worker SIGKILLs (each followed by a restart).",
)
@click.option(
    "--pauses",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Workers stopped (SIGSTOP) past their lease on the orders they hold, then continued.",
)
@click.option(
    "--restart-redis/--no-restart-redis",
    default=True,
    show_default=True,
    help="Restart Redis once (only when this run started it: not with --redis-url).",
)
@click.option(
    "--restart-postgres/--no-restart-postgres",
    default=True,
    show_default=True,
    help="Restart PostgreSQL once (only when this run started it: with --private-postgres).",
)
@click.option(
    "--private-postgres",
    is_flag=True,
    help="Start a private PostgreSQL server instead of using DATABASE_URL's (so its restart "
    "happens).",
)
@click.option(
    "--rate",
    type=click.FloatRange(1),
    default=40.0,
    show_default=True,
    help="Signals per second sent.",
)
@click.option(
    "--faults/--no-faults",
    "with_faults",
    default=True,
    show_default=True,
    help="Apply the default fault plan.",
)
@click.option(
    "--streams/--no-streams",
    "with_streams",
    default=True,
    show_default=True,
    help="Run the stream holder (execq streams); with --faults its streams lose 10 % of "
    "their messages and each exchange's connection is cut every 30 s.",
)
@click.option(
    "--stream-kills",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Stream holder SIGKILLs, each followed by a new holder that takes the leases over.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--redis-url", help=REDIS_URL_HELP)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep logs here instead of a temporary directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last.")
def chaos(
    signals: int,
    worker_count: int,
    concurrency: int,
    kills: int,
    pauses: int,
    restart_redis: bool,
    restart_postgres: bool,
    private_postgres: bool,
    rate: float,
    with_faults: bool,
    with_streams: bool,
    stream_kills: int,
    seed: int,
    redis_url: str | None,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Send a stream of signals under faults, kills and restarts; audit exactly-once.

    Runs on a private redis-server and its own PostgreSQL database (created and
    dropped). Exit 1 when the audit finds duplicates, lost signals, orphans, stuck
    orders or committed order states without their events.
    """
    from workers.harness.bench import RedisNotEmpty
    from workers.harness.chaos import run_chaos
    from workers.harness.services import ServicesUnavailable

    _stop_on_sigterm()
    try:
        result = run_chaos(
            signals=signals,
            workers=worker_count,
            concurrency=concurrency,
            kills=kills,
            pauses=pauses,
            restart_redis=restart_redis,
            restart_postgres=restart_postgres,
            private_postgres=private_postgres,
            rate=rate,
            faults=with_faults,
            streams=with_streams,
            stream_kills=stream_kills,
            seed=seed,
            redis_url=redis_url,
            workdir=workdir,
        )
    except (ServicesUnavailable, RedisNotEmpty) as exc:
        _services_error(exc)
        return
    summary = [
        f"signals {result['signals']}, terminal {result['terminal']}, "
        f"duplicates {result['duplicates']}, lost {result['lost']}, "
        f"orphans {result['orphans']}, stuck {result['stuck']}, "
        f"missing events {result['missing_events']}",
        f"kills {result['kills']}, pauses {result['pauses']}, restarts {result['restarts']}, "
        f"stream holder kills {result['stream_kills']}, {result['seconds']} s",
        "fills by stream {stream}, by the create's answer {create}, by poll {poll}".format(
            **result["fills"]
        ),
        *[f"note: {note}" for note in result.get("notes", [])],
        "audit: clean" if result["clean"] else "audit: FAILED",
    ]
    _emit(result, as_json, summary)
    sys.exit(EXIT_OK if result["clean"] else EXIT_CHECK_FAILED)
