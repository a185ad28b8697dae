"""TLS on the client port: a configuration switch, tested with a certificate made here.

The client library verifies by default: a certificate it cannot chain to a trusted root is
refused, and so is a plaintext client on the TLS port (it never gets a WELCOME).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_e2e import PW, conn_addr, expect, greet, make_users, rest_url, stack_settings

from cli.stack import Stack
from client import IMClient, Message
from common.errors import ConfigError, IMError
from common.tls import client_context, server_context


def make_certificate(directory: Path, name: str = "im-test") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest_asyncio.fixture
async def tls_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    cert, key = make_certificate(tmp_path)
    st = Stack(stack_settings(tmp_path, tls_cert=str(cert), tls_key=str(key), greet_timeout=1.0))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_chat_over_tls_with_the_certificate_verified(
    tls_stack: Stack, tmp_path: Path
) -> None:
    trust = client_context(cafile=str(tmp_path / "im-test.crt"))
    alice, bob = await make_users(tls_stack, "alice", "bob", connect=False)
    try:
        assert (await alice.login()).tls  # REST tells clients to use TLS
        for c in (alice, bob):
            c._conn._tls = trust
            await c.connect()
        mid = await alice.send_text("bob", "over TLS")
        msg = await expect(bob, Message)
        assert (msg.msg_id, msg.text) == (mid, "over TLS")  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_the_client_verifies_by_default(tls_stack: Stack) -> None:
    """The login answer switches TLS on, and the default context trusts only the system's roots,
    which did not sign our test certificate."""
    (alice,) = await make_users(tls_stack, "alice", connect=False)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await alice.connect()
    finally:
        await alice.close()


@pytest.mark.asyncio
async def test_a_certificate_for_another_host_is_refused(tls_stack: Stack, tmp_path: Path) -> None:
    other, _ = make_certificate(tmp_path, "other-ca")  # trusted, but not what the server has
    alice = IMClient(rest_url(tls_stack), "alice", PW, tls=client_context(cafile=str(other)))
    await alice.register()
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await alice.connect()
    finally:
        await alice.close()


@pytest.mark.asyncio
async def test_plaintext_on_the_tls_port_gets_nothing(tls_stack: Stack) -> None:
    (alice,) = await make_users(tls_stack, "alice", connect=False)
    token = (await alice.login()).token
    reader, writer = await asyncio.open_connection(*conn_addr(tls_stack))
    writer.write(greet(token))
    async with asyncio.timeout(5):
        data = await reader.read()  # until the server drops us
    writer.close()
    assert b"welcome" not in data and not data.startswith(b"\x00\x00")
    plain = IMClient(rest_url(tls_stack), "alice", PW, tls=False)
    try:
        with pytest.raises((IMError, ConnectionError)):
            await plain.connect(timeout=3)
    finally:
        await plain.close()
        await alice.close()


def test_a_bad_certificate_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not load"):
        server_context(str(tmp_path / "missing.crt"), str(tmp_path / "missing.key"))
