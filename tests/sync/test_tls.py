"""TLS between agent and coordinator, against a real coordinator serving HTTPS on 127.0.0.1 with a self-signed
certificate made here (``cryptography``): the agent accepts it when its fingerprint is pinned (a whole round of
secure aggregation runs over it, with enrollment required), refuses a wrong pin before sending anything, does not
trust it through the system trust store, trusts it as a CA file; ``agent sync`` refuses plain HTTP to another
machine without connecting; ``agent-coordinator serve --certfile/--keyfile`` serves HTTPS and prints the pin.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from sync.client.http_client import RoundResult
from sync.client.identity import Identity
from sync.client.ledger import JsonlLedger
from sync.client.run import SyncOutcome, run_sync
from sync.client.tls import CertificateMismatch, InsecureTransport, TransportPolicy, check_url, ssl_context
from sync.coordinator.access import AccessPolicy, enrollment_store, new_token, token_hash
from sync.coordinator.cli import main
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import coordinator_process, free_port, serve_in_thread
from sync.coordinator.openapi import OPENAPI
from sync.coordinator.service import Coordinator
from sync.protocol.certs import fingerprint, is_loopback, parse_fingerprint
from sync.protocol.wire import API, JSON_TYPE, b64e, request_message
from tests.sync.helpers import cohort_round
from tests.sync.test_openapi import _check as check_refusal
from tests.sync.test_openapi import _request as fuzzed_request

SIZE = 64
COHORT = 3


def _certificate(folder: Path, name: str) -> tuple[Path, Path, str]:
    """A self-signed server certificate for 127.0.0.1 (and localhost): (cert file, key file, its fingerprint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / f"{name}.crt", folder / f"{name}.key"
    certfile.write_bytes(cert.public_bytes(Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return certfile, keyfile, fingerprint(cert.public_bytes(Encoding.DER))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    folder = tmp_path_factory.mktemp("certs")
    return {name: _certificate(folder, name) for name in ("server", "other")}


@pytest.fixture
def https(tmp_path: Path, certs: dict[str, tuple[Path, Path, str]]) -> Iterator[tuple[Coordinator, str]]:
    """A coordinator serving HTTPS on 127.0.0.1 that requires enrollment tokens (the operator's defaults)."""
    config = CoordinatorConfig(
        db=tmp_path / "coordinator.sqlite3",
        vector_size=SIZE,
        min_cohort=COHORT,
        target_cohort=COHORT,
        over_selection=0.0,
        advertise_s=60.0,
        share_keys_s=60.0,
        masked_input_s=60.0,
        unmask_s=60.0,
        weight_cap=4.0,
    )
    coordinator = Coordinator(config)
    certfile, keyfile, _ = certs["server"]
    with serve_in_thread(coordinator, access=AccessPolicy(), certfile=certfile, keyfile=keyfile) as url:
        assert url.startswith("https://")
        yield coordinator, url


def _tokens(coordinator: Coordinator, n: int) -> list[str]:
    tokens = [new_token() for _ in range(n)]
    with coordinator.lock:  # what `agent-coordinator enroll` stores
        enrollment_store(coordinator.state).add_enrollment_tokens([token_hash(t) for t in tokens], 0.0)
    return tokens


def test_pinned_fingerprint_carries_a_whole_round_with_enrollment_over_https(
    https: tuple[Coordinator, str], certs: dict[str, tuple[Path, Path, str]], tmp_path: Path
) -> None:
    coordinator, url = https
    policy = TransportPolicy(fingerprint=certs["server"][2])
    check_url(url, policy)
    context = ssl_context(url, policy)
    tokens = _tokens(coordinator, COHORT)
    rng = np.random.default_rng(0)
    outcome: list[SyncOutcome | BaseException] = []

    def one_sync() -> None:  # what `agent sync` runs, minus the profile: register with a token, fetch, one round
        try:
            outcome.append(
                run_sync(
                    url,
                    Identity.generate(),
                    lambda shared: (rng.normal(0, 1e-3, shared.size), 10.0),
                    JsonlLedger(tmp_path / "ledger.jsonl"),
                    timeout=90.0,
                    verify=context,
                    enrollment=tokens[0],
                )
            )
        except BaseException as error:  # reported by the assertion below
            outcome.append(error)

    others = rng.normal(0, 1e-3, (COHORT - 1, SIZE))
    thread = threading.Thread(target=one_sync)
    thread.start()
    results = asyncio.run(cohort_round(url, others, 10.0, timeout=90.0, verify=context, tokens=tokens[1:]))
    thread.join(timeout=120)
    assert all(isinstance(r, RoundResult) and r.status == "done" for r in results), results
    assert len(outcome) == 1 and isinstance(outcome[0], SyncOutcome), outcome
    assert outcome[0].shared.version == 1 and outcome[0].round.status == "done"
    assert enrollment_store(coordinator.state).enrollment_counts() == (COHORT, COHORT)  # one agent per token


def test_a_wrong_pin_is_refused_before_anything_is_sent(
    https: tuple[Coordinator, str], certs: dict[str, tuple[Path, Path, str]]
) -> None:
    coordinator, url = https
    with pytest.raises(CertificateMismatch) as refused:
        ssl_context(url, TransportPolicy(fingerprint=certs["other"][2]))
    message = str(refused.value)
    assert certs["server"][2] in message and certs["other"][2] in message and "nothing was sent" in message
    assert "coordinator_fingerprint" in refused.value.hint
    assert coordinator.state.count_rows("agents") == 0


def test_the_system_trust_store_does_not_trust_a_self_signed_coordinator_but_its_ca_file_does(
    https: tuple[Coordinator, str], certs: dict[str, tuple[Path, Path, str]]
) -> None:
    _, url = https
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/healthz", verify=ssl_context(url, TransportPolicy()))
    trusted = ssl_context(url, TransportPolicy(ca_file=certs["server"][0]))
    assert httpx.get(f"{url}/healthz", verify=trusted).json() == {"ok": True}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # another CA is not this one
        httpx.get(f"{url}/healthz", verify=ssl_context(url, TransportPolicy(ca_file=certs["other"][0])))


def test_fingerprints_and_loopback_hosts_are_read_as_written() -> None:
    digits = "ab" * 32
    colons = ":".join(["AB"] * 32)
    for text in (f"sha256:{digits}", f"SHA256:{colons}", digits, f"sha256 Fingerprint={colons}"):
        assert parse_fingerprint(text) == f"sha256:{digits}"
    for bad in ("sha256:abc", "md5:" + digits, "sha256:" + "zz" * 32):
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            parse_fingerprint(bad)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("192.0.2.2", "0.0.0.0", "example.org", "localhost.example.org"))
    for url in ("ftp://127.0.0.1/", "127.0.0.1:8750"):
        with pytest.raises(InsecureTransport):
            check_url(url, TransportPolicy())
    with pytest.raises(InsecureTransport, match="pinned"):
        check_url("http://127.0.0.1:8750", TransportPolicy(fingerprint=f"sha256:{digits}"))
    check_url("http://127.0.0.1:8750", TransportPolicy())  # this machine: plain HTTP is fine
    check_url("http://192.0.2.9:8750", TransportPolicy(insecure_http=True))  # told to


def _non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this machine has no route off loopback, so no non-loopback address to listen on")
        address = str(probe.getsockname()[0])
    if is_loopback(address):
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    return address


def test_agent_sync_refuses_plain_http_to_another_machine_without_connecting(tmp_path: Path) -> None:
    address = _non_loopback_address()
    with socket.socket() as listener:  # a real listener where the agent is pointed: it must see no connection
        listener.bind((address, 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://{address}:{listener.getsockname()[1]}"
        result = CliRunner().invoke(app, ["sync", "--coordinator", url])
        assert result.exit_code == 1, result.output
        assert "Refusing to sync with" in result.stderr and "plain HTTP" in result.stderr
        assert "--insecure-http" in result.stderr and "Traceback" not in result.output
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_agent_sync_with_a_wrong_pin_in_its_config_stops_with_both_fingerprints(
    https: tuple[Coordinator, str], certs: dict[str, tuple[Path, Path, str]]
) -> None:
    coordinator, url = https
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    pin = ":".join(certs["other"][2].removeprefix("sha256:")[i : i + 2].upper() for i in range(0, 64, 2))
    (paths.config_dir() / "config.toml").write_text(
        f'[sync]\nepsilon_budget = inf\ncoordinator_fingerprint = "sha256:{pin}"\n', encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["sync", "--coordinator", url])
    assert result.exit_code == 1, result.output
    assert "not the pinned" in result.stderr and certs["other"][2] in result.stderr, result.stderr
    assert coordinator.state.count_rows("agents") == 0


def test_serve_with_a_certificate_speaks_https_and_prints_its_pin(
    tmp_path: Path, certs: dict[str, tuple[Path, Path, str]]
) -> None:
    certfile, keyfile, pin = certs["server"]
    log = tmp_path / "serve.log"
    args = ("--vector-size", "8", "--certfile", str(certfile), "--keyfile", str(keyfile))
    with coordinator_process(tmp_path / "c.sqlite3", args=args, log=log, dev=False) as (url, _process):
        assert url.startswith("https://")
        context = ssl_context(url, TransportPolicy(fingerprint=pin))
        answer = httpx.post(
            f"{url}{API}/agents", content=b"{}", headers={"content-type": "application/json"}, verify=context
        )
        assert answer.status_code == 401  # HTTPS works; unsigned, so refused
        with pytest.raises(httpx.TransportError):  # plain HTTP to the HTTPS port gets nowhere
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5.0)
    printed = log.read_text(encoding="utf-8")
    assert f"serving on {url}" in printed and pin in printed and "enrollment token" in printed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--host", "0.0.0.0", "--open-enrollment"), "only for a coordinator on a loopback address"),
        (("--certfile", "missing.crt"), "give both --certfile and --keyfile"),
        (("--certfile", "missing.crt", "--keyfile", "missing.key"), "cannot serve HTTPS"),
        (("--agent-rate", "-1"), "must be ≥ 0"),
    ],
)
def test_serve_refuses_an_unsafe_or_broken_setup_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--port", str(free_port()), "--vector-size", "8", "--db", str(tmp_path / "c.sqlite3"), *args])
    assert stopped.value.code == 1
    printed = capsys.readouterr().err
    assert expected in printed and "Traceback" not in printed, printed
    assert not (tmp_path / "c.sqlite3").exists()  # refused before any state was made


def test_fuzzed_requests_over_https_with_enrollment_required_get_a_4xx_with_a_reason_never_a_5xx(
    https: tuple[Coordinator, str], certs: dict[str, tuple[Path, Path, str]]
) -> None:
    """tests/sync/test_openapi.py's fuzzer, fewer examples, over TLS against the operator's defaults (tokens
    required, rate limits on: the fuzzer meets 401 enrollment_required and 429 too)."""
    coordinator, url = https
    pinned = ssl_context(url, TransportPolicy(fingerprint=certs["server"][2]))
    http = httpx.Client(base_url=url, timeout=30.0, verify=pinned)
    identity, nonces = Identity.generate(), itertools.count(1)

    def sign(request: httpx.Request) -> None:
        nonce = next(nonces)
        message = request_message(request.method, request.url.raw_path.decode(), nonce, request.content)
        request.headers.update(
            {"x-agent-id": identity.agent_id, "x-nonce": str(nonce), "x-signature": b64e(identity.key.sign(message))}
        )

    body = json.dumps({"public_key": b64e(identity.public), "enrollment": _tokens(coordinator, 1)[0]}).encode()
    registration = http.build_request("POST", f"{API}/agents", content=body, headers={"content-type": JSON_TYPE})
    sign(registration)
    assert http.send(registration).status_code == 201
    schema = schemathesis.openapi.from_dict(OPENAPI)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    answered: dict[tuple[int, str], int] = {}
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        declared = OPENAPI["paths"][operation.path][operation.method]
        if mode is GenerationMode.NEGATIVE and not ("parameters" in declared or "requestBody" in declared):
            continue  # nothing to malform

        @given(case=operation.as_strategy(mode), signed=st.booleans())
        @settings(
            max_examples=3, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def run(case: schemathesis.Case[Any], signed: bool) -> None:
            request = fuzzed_request(http, case)
            if signed:
                sign(request)
            response = http.send(request)
            check_refusal(response, request)
            key = (response.status_code, response.json()["error"] if response.status_code >= 400 else "")
            answered[key] = answered.get(key, 0) + 1

        run()
    http.close()
    assert any(200 <= status < 300 for status, _ in answered)
    assert {"missing_signature", "bad_signature"} <= {reason for _, reason in answered}, answered
