"""How the agent makes sure it talks to its coordinator: HTTPS verified against the system trust store, a CA file,
or a pinned certificate fingerprint; plain HTTP only to this machine unless the person says otherwise.

A pinned fingerprint (``sha256:…``, what ``agent-coordinator serve --certfile`` prints) is checked on a first TLS
handshake before anything is sent; the certificate it names then becomes the only trust anchor of every connection
of the sync, so a server without that certificate's private key cannot take over half-way.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import truststore

from sync.errors import SyncError
from sync.protocol.certs import fingerprint, is_loopback


class InsecureTransport(SyncError):
    """The coordinator URL would send the sync over plain HTTP to another machine, or is not an HTTP(S) URL."""

    title = "Insecure coordinator URL"


class CertificateMismatch(SyncError):
    """The coordinator presented another certificate than the one pinned in the agent's config."""

    title = "Coordinator certificate mismatch"


@dataclass(frozen=True)
class TransportPolicy:
    """How the agent checks the coordinator (the ``[sync]`` settings and ``agent sync`` flags)."""

    fingerprint: str | None = None
    """A pinned certificate, ``sha256:`` + 64 hex digits (canonical: :func:`sync.protocol.certs.parse_fingerprint`)."""
    ca_file: Path | None = None
    """PEM file of the CA(s) to trust instead of the system trust store."""
    insecure_http: bool = False
    """Allow plain ``http://`` to a host other than this machine."""


def _host_port(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InsecureTransport(
            f"The coordinator URL {url!r} is not an http(s) URL.", hint="Write it as https://host:port."
        )
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as error:
        raise InsecureTransport(f"The coordinator URL {url!r} has a bad port: {error}.") from error
    return scheme, parts.hostname, port


def check_url(url: str, policy: TransportPolicy) -> None:
    """Refuse (:class:`InsecureTransport`, before any connection) plain HTTP to a host that is not this machine unless
    ``policy.insecure_http``, and a pinned certificate with a URL that has none."""
    scheme, host, _ = _host_port(url)
    if scheme == "https":
        return
    if policy.fingerprint:
        raise InsecureTransport(
            f"A coordinator certificate is pinned (coordinator_fingerprint) but {url} is plain HTTP.",
            hint="Use the coordinator's https:// URL, or remove the pin.",
        )
    if not is_loopback(host) and not policy.insecure_http:
        raise InsecureTransport(
            f"Refusing to sync with {url} over plain HTTP: anyone on the network path could read or change the "
            "traffic and impersonate the coordinator.",
            hint="Use the coordinator's https:// URL. Only on a network you trust: pass --insecure-http, or set "
            "[sync] insecure_http = true in config.toml.",
        )


def server_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The DER certificate ``host:port`` presents (nothing verified, nothing sent but the TLS handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der


def ssl_context(url: str, policy: TransportPolicy) -> ssl.SSLContext:
    """The TLS context every connection of one sync uses (after :func:`check_url`).

    Pinned: the certificate of ``url`` must have the pinned fingerprint (:class:`CertificateMismatch` otherwise, after
    a bare handshake) and is then the only certificate trusted; with a CA file: that file's CAs; else the system
    trust store (truststore: the operating system's own store and checks). Host names are checked except when pinned.
    """
    scheme, host, port = _host_port(url)
    if policy.fingerprint and scheme == "https":
        try:
            der = server_certificate(host, port)
        except (OSError, ssl.SSLError) as error:
            raise SyncError(
                f"The coordinator at {url} is unreachable: {error}", hint="Check the URL and that it is running."
            ) from error
        found = fingerprint(der)
        if found != policy.fingerprint:
            raise CertificateMismatch(
                f"The coordinator at {url} presented the certificate {found}, not the pinned {policy.fingerprint}: "
                "nothing was sent.",
                hint="Someone may be intercepting the connection, or the operator replaced the certificate. Ask the "
                "operator for the fingerprint `agent-coordinator serve` prints and update [sync] "
                "coordinator_fingerprint in config.toml.",
            )
        pinned = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False  # the pin names the certificate itself
        pinned.verify_mode = ssl.CERT_REQUIRED
        pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the pinned certificate is the whole chain
        pinned.load_verify_locations(cadata=der)
        return pinned
    if policy.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(policy.ca_file))
        except (OSError, ssl.SSLError) as error:
            raise SyncError(
                f"Cannot read the coordinator CA file {policy.ca_file}: {error}",
                hint="Fix [sync] coordinator_ca_file in config.toml (a PEM file).",
            ) from error
    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def connection_error(url: str, error: Exception) -> SyncError:
    """The error to show when connecting to the coordinator failed; an untrusted certificate says how to trust it."""
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower():
        return SyncError(
            f"The coordinator at {url} presented a certificate this machine does not trust: {text}",
            hint='If its operator uses its own certificate, pin it with [sync] coordinator_fingerprint = "sha256:…" '
            "(printed by `agent-coordinator serve`) or give its CA with [sync] coordinator_ca_file in config.toml.",
        )
    return SyncError(f"The coordinator at {url} is unreachable: {text}", hint="Check the URL and that it is running.")
