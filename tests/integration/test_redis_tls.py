"""Redis with a password over TLS (``rediss://``): a worker fills an order through it on
execq's own broker transport, and no place Celery shows its configuration shows the password.

The test starts its own ``redis-server`` with TLS only (no plain port), a password and a
certificate from a throwaway CA it generates.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import ROOT, ManagedProcess, free_port, wait_for

BTC = "BTC/USDT:USDT"
PASSWORD = "tls-test-pw-9f3c1d"


@dataclass
class TlsRedis:
    """A ``redis-server`` with TLS only (no plain port) and a password, started by the test."""

    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    password_file: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """rediss://127.0.0.1:PORT/0, without the password."""
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def env(self) -> dict[str, str]:
        """What an execq process needs to reach this Redis: the password from a file."""
        return {
            "REDIS_URL": self.url,
            "EXECQ_REDIS_PASSWORD_FILE": str(self.password_file),
            "EXECQ_REDIS_TLS_CA_FILE": str(self.ca_file),
        }

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", "0",
                "--tls-port", str(self.port),
                "--bind", "127.0.0.1",
                "--tls-cert-file", str(self.cert_file),
                "--tls-key-file", str(self.key_file),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
                "--requirepass", PASSWORD,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self._answers, 20, message="TLS redis-server did not answer")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("redis-server with TLS did not start (built without TLS?)")
        client = redis.Redis.from_url(self.url, password=PASSWORD, ssl_ca_certs=str(self.ca_file))
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def restart_keeping_data(self) -> None:
        """Save, stop and start again, as a Redis with persistence restarts (compose's does)."""
        client = redis.Redis.from_url(self.url, password=PASSWORD, ssl_ca_certs=str(self.ca_file))
        try:
            client.shutdown(save=True)
        except redis.ConnectionError:
            # SHUTDOWN closes the connection by design; the wait below checks it happened.
            pass
        finally:
            client.close()
        assert self.process is not None
        self.process.wait(timeout=20)
        self.start()


def write_throwaway_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1; returns (ca, cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "execq test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "redis.crt", directory / "redis.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("tls-redis")
    ca, cert, key = write_throwaway_ca_and_server_cert(directory)
    password_file = directory / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    server = TlsRedis(directory, ca, cert, key, password_file, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def tls_client(tls: TlsRedis):  # noqa: ANN201 - a Celery app
    """A Celery client on the TLS Redis, configured as ``workers.app`` configures itself."""
    import ssl

    from celery import Celery

    from workers.celery_ext.broker import transport_for

    url = tls.url.replace("rediss://", f"rediss://:{PASSWORD}@")
    client = Celery("tls-client", broker=url, backend=url, set_as_current=False)
    options = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tls.ca_file)}
    client.conf.update(
        broker_transport=transport_for(url),
        broker_use_ssl=options,
        redis_backend_use_ssl=options,
        accept_content=["json"],
        task_serializer="json",
    )
    return client


@pytest.mark.services
def test_a_worker_fills_an_order_over_rediss_and_celery_shows_no_password(
    tls_redis, workers, db, sim
):
    # Given a worker on the TLS Redis, its password from a file
    client = tls_client(tls_redis)
    try:
        worker = workers.spawn(concurrency=4, env=tls_redis.env)
        workers.wait_ready(worker, broker=client)
        # on execq's own broker transport (the one that keeps consuming after a restart)
        assert "Connected to workers.celery_ext.broker:TlsTransport://" in worker.log_tail(200)

        # When an operator sends an order through the outbox
        sent = run(
            [sys.executable, "-m", "workers.cli", "signal", "binance", "buy", "0.01", BTC]
            + ["--wait", "60", "--json"],
            tls_redis.env,
        )

        # Then it fills, and its result came back over TLS
        assert sent.returncode == 0, sent.stderr
        result = json.loads(sent.stdout.splitlines()[-1])["result"]
        assert result["status"] == "filled", result
        assert len(sim.orders_for(result["client_order_id"])) == 1

        # and neither `celery inspect conf` nor `celery report` shows the password
        conf = run(
            [sys.executable, "-m", "celery", "-A", "workers", "inspect", "conf"]
            + ["-d", worker.name, "--json"],
            tls_redis.env,
        )
        assert conf.returncode == 0, conf.stderr
        shown = json.loads(conf.stdout.splitlines()[-1])[worker.name]
        assert "redbeat_redis_url" in shown and "broker_url" in shown
        report = run([sys.executable, "-m", "celery", "-A", "workers", "report"], tls_redis.env)
        assert report.returncode == 0, report.stderr
        for output in (conf.stdout, report.stdout):
            assert PASSWORD not in output
            assert "********" in output

        # nor Flower's page of the worker, which shows its configuration
        flower_page = worker_page_in_flower(tls_redis, worker.name)
        assert "redbeat_redis_options" in flower_page
        assert PASSWORD not in flower_page
    finally:
        client.close()


@pytest.mark.services
def test_a_worker_on_rediss_keeps_consuming_after_redis_restarts_with_orders_in_flight(
    tls_redis, workers, db, sim
):
    from tests.integration.test_broker import orders_in_flight_survive_a_redis_restart

    client = tls_client(tls_redis)
    try:
        # Given a worker on the TLS Redis; two orders wait on the exchange when Redis
        # restarts under it: it takes the next order, and those in flight fill once each
        worker = workers.spawn(concurrency=4, env=tls_redis.env)
        workers.wait_ready(worker, broker=client)
        orders_in_flight_survive_a_redis_restart(
            client, worker, sim, tls_redis.restart_keeping_data
        )
    finally:
        client.close()


def worker_page_in_flower(tls: TlsRedis, worker_name: str) -> str:
    port = free_port()
    flower = ManagedProcess(
        "flower-tls",
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}"]
        + ["--address=127.0.0.1"],
        env={**tls.env, "FLOWER_BASIC_AUTH": "ops:flower-pw"},
    ).start()
    try:

        def page() -> str | None:
            if not flower.alive:
                raise AssertionError(f"flower exited:\n{flower.log_tail()}")
            try:
                response = requests.get(
                    f"http://127.0.0.1:{port}/worker/{worker_name}",
                    auth=("ops", "flower-pw"),
                    timeout=5,
                )
            except requests.ConnectionError:
                return None
            return response.text if response.ok and "broker_url" in response.text else None

        return wait_for(page, 60, interval_s=0.5, message=f"no worker page:\n{flower.log_tail()}")
    finally:
        flower.stop()


def test_a_rediss_url_verifies_the_server_certificate_by_default(tls_redis):
    # Given the TLS Redis, and no CA file that vouches for its certificate
    env = {name: value for name, value in tls_redis.env.items() if "TLS_CA" not in name}

    # When the CLI talks to it
    result = run([sys.executable, "-m", "workers.cli", "kill-switch", "on"], env)

    # Then the connection is refused in one line: the certificate is checked, not trusted
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("execq: cannot connect to REDIS_URL (rediss://:***@127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1
    assert "certificate verify failed" in result.stderr
    assert PASSWORD not in result.stderr
