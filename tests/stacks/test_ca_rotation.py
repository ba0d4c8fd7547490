"""Rotating the endpoint's root CA (`foresight:tlsCaGenerations`, stacks/tls.py).

The program's side runs on Pulumi mocks: which roots, default issuer, role and trust bundle each list of generations
registers, and that the first generation registers exactly what a stack made before rotation existed has (any
change to a root's inputs would replace the CA every client trusts). Vault's side runs on a real OpenBao: a node
that holds a certificate of the old root renews within the hour once a new one issues (fetch_tls.py
--renew-after), without logging in while nothing changed, and a client that trusts the bundle accepts the
certificates of both roots in a real TLS handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from stacks.boot import fetch_tls
from stacks.spec import ConfigError
from tests.servers import OpenBao
from tests.stacks.mockrun import (
    PKI_DEFAULT_ISSUER,
    PKI_ROOT_CERT,
    REQUIRED_CONFIG,
    MockRun,
    Registered,
    fake_pem,
    pki_role,
    run_program,
)
from tests.stacks.test_fetch_tls import AwsNode, install_issuing, node_vault  # noqa: F401 - a fixture

GENERATIONS = "foresight:tlsCaGenerations"
ISSUING = "foresight:tlsCaIssuing"


def roots(run: MockRun) -> list[Registered]:
    """The root CAs by generation (registrations may arrive in any order)."""
    return sorted(run.of_type(PKI_ROOT_CERT), key=lambda root: (len(root.name), root.name))


def test_the_first_generation_registers_what_stacks_before_rotation_have() -> None:
    plain = run_program(REQUIRED_CONFIG)
    rotating = run_program({**REQUIRED_CONFIG, GENERATIONS: "[1, 2]"})
    [before] = plain.of_type(PKI_ROOT_CERT)
    first, second = roots(rotating)
    assert (first.name, first.props) == (before.name, before.props)  # same name, same inputs: no replacement
    assert "issuerName" not in first.props and before.name.endswith("-ca")
    assert second.name == f"{before.name}-2" and second.props["issuerName"] == "ca-2"
    assert second.props["commonName"] == f"{before.props['commonName']} 2"
    assert {key: value for key, value in second.props.items() if key not in ("issuerName", "commonName")} == {
        key: value for key, value in first.props.items() if key != "commonName"
    }  # the same mount, key type, lifetime and name constraints
    assert first.retain_on_delete and second.retain_on_delete  # the provider's delete wipes every issuer of a mount


def test_the_last_generation_issues_and_clients_trust_every_live_one() -> None:
    run = run_program({**REQUIRED_CONFIG, GENERATIONS: "[1, 2]"})
    first, second = roots(run)
    assert pki_role(run)["issuer_ref"] == f"issuer-{second.name}"
    default = run.one(PKI_DEFAULT_ISSUER).props
    assert default["default"] == f"issuer-{second.name}" and default["defaultFollowsLatestIssuer"] is False
    bundle = run.outputs["caCertificate"].value
    assert bundle == fake_pem("CERTIFICATE", first.name) + fake_pem("CERTIFICATE", second.name)
    assert not run.outputs["caCertificate"].secret

    retired = run_program({**REQUIRED_CONFIG, GENERATIONS: "[2]"})
    # Root 1 stays registered, unchanged: dropping its resource would delete it through the provider, whose
    # DELETE <mount>/root takes every issuer of the mount with it. It only leaves the bundle.
    assert [(root.name, root.props) for root in roots(retired)] == [(first.name, first.props),
                                                                    (second.name, second.props)]
    assert retired.outputs["caCertificate"].value == fake_pem("CERTIFICATE", second.name)
    assert pki_role(retired)["issuer_ref"] == f"issuer-{second.name}"
    assert retired.one(PKI_DEFAULT_ISSUER).props["default"] == f"issuer-{second.name}"
    trusted_again = run_program({**REQUIRED_CONFIG, GENERATIONS: "[1, 2]"})  # the same root 1, trusted again
    assert trusted_again.outputs["caCertificate"].value == bundle


def test_the_old_generation_can_keep_issuing_while_clients_learn_the_bundle() -> None:
    run = run_program({**REQUIRED_CONFIG, GENERATIONS: "[1, 2]", ISSUING: "1"})
    first, _ = roots(run)
    assert pki_role(run)["issuer_ref"] == run.one(PKI_DEFAULT_ISSUER).props["default"] == f"issuer-{first.name}"
    assert run.outputs["caCertificate"].value.count("BEGIN CERTIFICATE") == 2
    with pytest.raises(ConfigError) as failure:
        run_program({**REQUIRED_CONFIG, GENERATIONS: "[2, 3]", ISSUING: "1"})
    assert failure.value.keys == [ISSUING] and "1 is not one of foresight:tlsCaGenerations [2, 3]" in str(failure.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[2, 1]", "must be increasing, without repeats"),
        ("[1, 1]", "must be increasing, without repeats"),
        ("[]", "must be a list of generation numbers"),
        ("[0]", "must be a list of generation numbers"),
        ("[true]", "must be a list of generation numbers"),
        ('["1"]', "must be a list of generation numbers"),
        ("[1, 2, 3, 4]", "at most 3 at once"),
        ("two", "must be a list of numbers, e.g. [1, 2]"),
    ],
)
def test_bad_generations_are_refused_before_any_resource(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as failure:
        run_program({**REQUIRED_CONFIG, GENERATIONS: value})
    assert failure.value.keys == [GENERATIONS] and message in str(failure.value)


def test_a_single_number_is_one_trusted_generation() -> None:
    """`pulumi config set foresight:tlsCaGenerations 2` stores the number as a string."""
    run = run_program({**REQUIRED_CONFIG, GENERATIONS: "2"})
    first, second = roots(run)
    assert second.props["issuerName"] == "ca-2" and "issuerName" not in first.props
    assert run.outputs["caCertificate"].value == fake_pem("CERTIFICATE", second.name)


def _handshake(cert_dir: Path, bundle: str, host: str) -> x509.Certificate:
    """A TLS handshake between a server holding cert_dir's pair and a client trusting only `bundle` that checks
    `host`; the certificate the client accepted."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    client_context = ssl.create_default_context(cadata=bundle)
    client_side, server_side = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_side, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as err:  # the client refused: its error is the one to show
            errors.append(err)

    server = threading.Thread(target=serve)
    server.start()
    try:
        with client_context.wrap_socket(client_side, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.send(b"x")
    finally:
        server.join(10)
    assert der is not None and not errors
    return x509.load_der_x509_certificate(der)


@pytest.fixture
def rotation(node_vault: AwsNode) -> tuple[AwsNode, dict[str, str]]:  # noqa: F811 - the imported fixture
    """The AWS stack's Vault layout in OpenBao, and its roots' issuer ids there by resource name."""
    vault = node_vault.vault
    [root] = vault.run.of_type(PKI_ROOT_CERT)
    issuers = {root.name: vault.admin.read(f"{vault.layout.pki_mount}/issuer/default")["data"]["issuer_id"]}
    return node_vault, issuers


def test_a_node_renews_within_the_hour_once_a_new_root_issues_and_clients_trust_both(
    rotation: tuple[AwsNode, dict[str, str]], tmp_path: Path, openbao: OpenBao, capsys: pytest.CaptureFixture[str]
) -> None:
    node, issuers = rotation
    vault, out = node.vault, tmp_path / "tls"
    hourly = ["--out", str(out), "--renew-after", "3600"]
    assert fetch_tls.main(["--out", str(out)]) == 0
    old_certificate, old_key = (out / "tls.crt").read_text(), (out / "tls.key").read_text()
    assert fetch_tls.main(hourly) == 0  # young, and its CA still issues: no login, nothing written
    assert "nothing issued" in capsys.readouterr().out
    assert len(node.tokens) == 1 and (out / "tls.key").read_text() == old_key

    published = run_program({**vault.config, GENERATIONS: "[1, 2]", ISSUING: "1"}, stack=vault.stack)
    install_issuing(vault.admin, published, issuers)  # root 2 exists and is in the bundle; root 1 still issues
    bundle = published.outputs["caCertificate"].value
    for name, issuer in issuers.items():  # the mocks' certificates -> the ones OpenBao generated
        pem = vault.admin.read(f"{vault.layout.pki_mount}/issuer/{issuer}")["data"]["certificate"]
        bundle = bundle.replace(fake_pem("CERTIFICATE", name), pem.rstrip("\n") + "\n")
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert fetch_tls.main(hourly) == 0  # nodes stay on root 1 while clients learn the bundle
    assert "nothing issued" in capsys.readouterr().out and len(node.tokens) == 1

    rotated = run_program({**vault.config, GENERATIONS: "[1, 2]"}, stack=vault.stack)
    known = dict(issuers)
    assert install_issuing(vault.admin, rotated, issuers) == known  # no new root: root 2 becomes the issuer
    assert fetch_tls.main(hourly) == 0  # an hour at most after the new root became the default issuer
    assert "wrote ca.pem, tls.crt, tls.key" in capsys.readouterr().out
    assert len(node.tokens) == 2 and node.revoked()
    new_root = x509.load_pem_x509_certificate(
        vault.admin.read(f"{vault.layout.pki_mount}/issuer/{issuers[roots(rotated)[1].name]}")[
            "data"]["certificate"].encode()
    )
    assert x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()) == new_root
    new = _handshake(out, bundle, vault.host)
    new.verify_directly_issued_by(new_root)

    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "tls.crt").write_text(old_certificate)
    (old_dir / "tls.key").write_text(old_key)
    old = _handshake(old_dir, bundle, vault.host)  # a node not renewed yet still serves clients of the bundle
    assert old.issuer != new.issuer

    assert fetch_tls.main(hourly) == 0  # renewed: quiet again
    assert "nothing issued" in capsys.readouterr().out and len(node.tokens) == 2

    os.utime(out / "tls.crt", (0, 0))  # a day old: due anyway
    assert fetch_tls.main(hourly) == 0
    assert "wrote" in capsys.readouterr().out and len(node.tokens) == 3

    retired = run_program({**vault.config, GENERATIONS: "[2]"}, stack=vault.stack)
    assert install_issuing(vault.admin, retired, issuers) == known  # nothing new; the old root stays, unused
    assert len(vault.admin.list(f"{vault.layout.pki_mount}/issuers")["data"]["keys"]) == 2
    last = vault.admin.read(f"{vault.layout.pki_mount}/issuer/{issuers[roots(retired)[1].name]}")["data"][
        "certificate"]
    assert retired.outputs["caCertificate"].value == fake_pem("CERTIFICATE", roots(retired)[1].name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(old_dir, last, vault.host)  # once the old root is dropped from the bundle, its certificates fail
    assert _handshake(out, last, vault.host).issuer == new.issuer


def test_without_its_files_or_when_vault_cannot_say_which_ca_issues_a_run_issues_or_fails(
    node_vault: AwsNode, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out), "--renew-after", "3600"]) == 0  # nothing held yet: issue
    assert "wrote" in capsys.readouterr().out and len(node_vault.tokens) == 1
    monkeypatch.setenv("FORESIGHT_TLS_VAULT_PKI_MOUNT", "no-such-mount")
    before = (out / "tls.key").read_text()
    assert fetch_tls.main(["--out", str(out), "--renew-after", "3600"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fetch_tls: GET ") and "/v1/no-such-mount/ca/pem" in error
    assert (out / "tls.key").read_text() == before and len(node_vault.tokens) == 1  # the held pair stays
