"""Webhook URLs come from tenants: only public destinations are called unless allowed, and a
delivery connects to the very addresses that were vetted."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ftaas_core.webhooks import Claim, _send, new_secret, refusal

PRIVATE = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.7/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://[::]/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fec0::1]/hook",  # site-local
    "http://[ff02::1]/hook",  # multicast
    # Loopback and the metadata endpoint dressed as IPv6, each way IPv6 carries IPv4:
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped
    "http://[::ffff:7f00:1]/hook",
    "http://[::ffff:0:7f00:1]/hook",  # IPv4-translated
    "http://[::127.0.0.1]/hook",  # IPv4-compatible
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64, how an IPv6-only cluster reaches the metadata
    "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64
    "http://[2002:a9fe:a9fe::]/hook",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1 obfuscated
]

PUBLIC = [
    "https://8.8.8.8/hook",
    "http://[2606:4700:4700::1111]/h",
    "http://[64:ff9b::808:808]/h",  # NAT64 of a public address
    "http://[::ffff:8.8.8.8]/h",
    "http://[2002:808:808::1]/h",  # 6to4 of a public address
    "http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/h",  # Teredo, client 8.8.8.8 obfuscated
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_destinations_are_refused_with_the_reason(url: str) -> None:
    reason = refusal(url)
    assert reason is not None and "not a public address" in reason


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_pass(url: str) -> None:
    assert refusal(url) is None


def test_a_refused_delivery_sends_nothing_and_says_why() -> None:
    def never(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"sent to {request.url}")

    claim = Claim("whd_1", "http://169.254.169.254/hook", "whsec_x", "{}", 1)
    with httpx2.Client(transport=httpx2.MockTransport(never)) as client:
        outcome = _send(client, claim, allow_private=False)
        assert outcome.status_code is None
        assert outcome.error is not None and outcome.error.startswith("Not sent:")
        assert "169.254.169.254" in outcome.error


class Rebinding:
    """A stub for ``socket.getaddrinfo``: ``name`` resolves to ``answers`` in turn (the last one
    from then on), as a DNS server an attacker controls answers with a short TTL; every other
    name resolves as usual."""

    def __init__(self, name: str, *answers: str) -> None:
        self.name = name
        self.answers = answers
        self.asked = 0
        self.system = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != self.name:
            return self.system(host, port, *args, **kwargs)
        address = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]


def test_delivery_connects_to_the_vetted_address_not_a_second_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = Rebinding("hooks.example", "93.184.216.34", "127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    sent: list[httpx2.Request] = []

    def receive(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(204)

    claim = Claim("whd_1", "https://hooks.example:8443/in?x=1", new_secret(), "{}", 1)
    with httpx2.Client(transport=httpx2.MockTransport(receive)) as client:
        assert _send(client, claim, allow_private=False).error is None
    (request,) = sent
    assert resolver.asked == 1
    assert request.url == "https://93.184.216.34:8443/in?x=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"


def test_each_resolved_address_is_vetted(monkeypatch: pytest.MonkeyPatch) -> None:
    def both(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0))
            for address in ("93.184.216.34", "10.0.0.5")
        ]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    reason = refusal("https://hooks.example/")
    assert reason is not None and "10.0.0.5" in reason


def _self_signed(name: str, directory: Path) -> Path:
    """A certificate for ``name`` only (no IP address in it), with its key, in one PEM file."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = directory / f"{name}.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


class TLSReceiver:
    """An HTTPS server on loopback that records the SNI name and Host header of each POST."""

    def __init__(self, pem: Path) -> None:
        self.seen: list[tuple[str | None, str | None]] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        names: list[str | None] = []
        context.sni_callback = lambda _socket, name, _context: names.append(name)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.seen.append((names[-1], self.headers["host"]))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads ``seen``."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[TLSReceiver, Path]]:
    pem = _self_signed("hooks.test", tmp_path)
    receiver = TLSReceiver(pem)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver, pem
    receiver.server.shutdown()
    receiver.server.server_close()


def test_a_pinned_https_delivery_keeps_the_name_for_tls_and_host(
    monkeypatch: pytest.MonkeyPatch, tls_receiver: tuple[TLSReceiver, Path]
) -> None:
    """Over real sockets: the certificate names the host only, so it verifies against the name
    although the connection goes to the vetted IP; a later DNS answer is never asked for."""
    receiver, pem = tls_receiver
    resolver = Rebinding("hooks.test", "127.0.0.1", "192.0.2.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    claim = Claim("whd_1", f"https://hooks.test:{receiver.port}/in", new_secret(), "{}", 1)
    with httpx2.Client(verify=ssl.create_default_context(cafile=pem), timeout=5) as client:
        outcome = _send(client, claim, allow_private=True)
    assert outcome.error is None and outcome.status_code == 200
    assert receiver.seen == [("hooks.test", f"hooks.test:{receiver.port}")]
    assert resolver.asked == 1
