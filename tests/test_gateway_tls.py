"""HTTPS for the public listener, and plain HTTP only on loopback (gateway.tls)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.config import ConfigError, GatewaySettings, HostPort, build_config
from gateway.server import create_app
from gateway.tls import is_loopback, server_context
from tests.support.cluster import free_ports
from tests.test_gateway_api import InProcessCluster


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flashsale test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gw.pem", directory / "gw-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("shop.example.com", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_is_only_for_loopback() -> None:
    assert server_context(GatewaySettings(), HostPort("127.0.0.1", 8080)) is None
    with pytest.raises(ConfigError, match="HTTPS"):
        server_context(GatewaySettings(), HostPort("0.0.0.0", 8080))


def test_tls_needs_both_files(tmp_path: Path) -> None:
    base = {"cluster": {"secret": "s"},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}]}
    with pytest.raises(ConfigError, match="tls_key"):
        build_config({**base, "gateway": {"tls_cert": "gw.pem"}}, tmp_path)
    config = build_config({**base, "gateway": {"tls_cert": "a.pem", "tls_key": "b.pem"}}, tmp_path)
    assert config.gateway_settings.tls_cert == (tmp_path / "a.pem").resolve()


def test_unreadable_certificates_are_a_config_error(tmp_path: Path) -> None:
    settings = GatewaySettings(tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "k.pem")
    with pytest.raises(ConfigError, match="cannot load"):
        server_context(settings, HostPort("0.0.0.0", 443))


async def test_the_gateway_serves_https_with_its_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_ports(1)[0]
    config = build_config(
        {
            "cluster": {"secret": "tls-test"},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": f"127.0.0.1:{port}"}],
            "bots": {"enabled": False},
            "gateway": {"tls_cert": str(cert), "tls_key": str(key), "feed_wait_ms": 50},
        },
        tmp_path,
    )
    context = server_context(config.gateway_settings, config.gateway("g1").listen)
    assert context is not None
    runner = web.AppRunner(create_app(config, "g1", cluster=InProcessCluster(config)))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/healthz")  # untrusted
    finally:
        await runner.cleanup()


def test_the_process_refuses_to_listen_beyond_loopback_without_tls(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[cluster]\nsecret = "s"\n'
        '[[nodes]]\nid = "n1"\nraft = "127.0.0.1:1"\napi = "127.0.0.1:2"\n'
        '[[gateways]]\nid = "g1"\nlisten = "0.0.0.0:1"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "g1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "HTTPS" in done.stderr
