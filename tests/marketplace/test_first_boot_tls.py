"""A marketplace node's TLS for its whole life: first boot keeps the CA's key wrapped by the node's KMS key and
nowhere in clear, and `renew` issues a new server certificate under that same CA once the current one nears
expiry, touches nothing before, and says what to do (never minting a CA on its own) when it cannot. Neither
renewal nor a new CA touches the metrics scrape token that first boot handed the buyer.

Real certificates, the real envelope and LocalKms; time is the `now` each call is given."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import marketplace.first_boot
from marketplace.first_boot import (
    CA_KEY_FILE,
    METRICS_TOKEN_FILE,
    RENEWAL_DOCS,
    Addresses,
    FirstBootError,
    NoStoredCaKey,
    load_ca,
    main,
    provision,
    read_certificate,
    renew,
    replace_ca,
)
from service.security.envelope import EnvelopeCipher
from service.security.kms.base import KmsError, WrappedKey
from service.security.kms.local import LocalKms
from service.security.local_ca import CertificateAuthority
from tests.marketplace.ca_key import KEYRING, assert_ca_key_sealed, local_cipher
from tests.marketplace.metrics_token import assert_scrape_token_minted
from tests.tlsutil import assert_tls_serves

REPO = Path(__file__).resolve().parents[2]
ADDRESSES = Addresses(
    public_ip="198.51.100.7", public_hostname="ec2-198-51-100-7.compute-1.amazonaws.com", private_ip="10.42.0.17"
)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Node:
    conf: Path
    keyring: Path
    cipher: EnvelopeCipher
    document: dict[str, Any]  # what the buyer read from the secret store

    @property
    def pinned_ca(self) -> x509.Certificate:
        """The CA every client was given at first boot."""
        return x509.load_pem_x509_certificate(self.document["ca_certificate"].encode())

    def files(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(self.conf.iterdir())}

    def leaf(self) -> x509.Certificate:
        return read_certificate(self.conf / "tls.crt")

    def assert_scrape_token_kept(self) -> None:
        """metrics.token still holds the token the buyer's Prometheus was given at first boot."""
        assert (self.conf / METRICS_TOKEN_FILE).read_text() == self.document["metrics_token"]


def first_boot(directory: Path) -> Node:
    conf = directory / "conf"
    conf.mkdir(parents=True)
    cipher = local_cipher(directory / KEYRING)
    documents: list[str] = []
    provision(conf, "acme", ADDRESSES, documents.append, cipher)
    return Node(conf, directory / KEYRING, cipher, json.loads(documents[0]))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return first_boot(tmp_path)


def kms_not_needed() -> EnvelopeCipher:
    pytest.fail("the KMS was used although no certificate was due")


def names(cert: x509.Certificate) -> tuple[str, list[str]]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return cert.subject.rfc4514_string(), sorted(str(name.value) for name in sans)


def lifetime(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def issue_nearly_expired_leaf(conf: Path, ca: CertificateAuthority, days: int = 30) -> None:
    """What tls.crt looks like `days` before it expires, in real time."""
    ca.issue(ADDRESSES.host, dns_names=[ADDRESSES.host], ip_addresses=[ADDRESSES.public_ip, ADDRESSES.private_ip],
             days=days).write(conf / "tls.crt", conf / "tls.key")


# --- first boot keeps the CA's key, wrapped ---------------------------------------------------------------------


def test_first_boot_keeps_the_ca_key_wrapped_by_the_kms_and_nowhere_in_clear(node: Node, tmp_path: Path) -> None:
    assert sorted(node.files()) == ["ca.crt", CA_KEY_FILE, METRICS_TOKEN_FILE, "tenants.json", "tls.crt", "tls.key"]
    assert_ca_key_sealed(node.conf, node.cipher)
    with pytest.raises(FirstBootError, match=f"cannot open .*{CA_KEY_FILE} with the node's KMS key"):
        load_ca(node.conf, local_cipher(tmp_path / "another-keyring.json"))


def test_the_ca_clients_pin_lives_ten_years_and_the_server_certificate_825_days(node: Node) -> None:
    assert lifetime(node.pinned_ca).days == 3650
    assert lifetime(node.leaf()).days == 825
    node.leaf().verify_directly_issued_by(node.pinned_ca)


class GrantOnItsWay(LocalKms):
    """A KMS that refuses the first `refusals` wraps, as a node's grant does while it propagates."""

    def __init__(self, refusals: int) -> None:
        super().__init__({"v1": os.urandom(32)}, "v1")
        self.refusals = refusals

    def wrap(self, dek: bytes) -> WrappedKey:
        if self.refusals:
            self.refusals -= 1
            raise KmsError("AWS KMS encrypt failed: AccessDeniedException")
        return super().wrap(dek)


@pytest.fixture
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """with_retries' own clock, advanced by its sleeps: its deadline holds without waiting for it."""
    clock = [0.0]
    monkeypatch.setattr(marketplace.first_boot, "time", SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)))


def test_a_tenant_name_of_63_characters_still_fits_the_cas_common_name(tmp_path: Path) -> None:
    provision(tmp_path, "t" * 63, ADDRESSES, lambda _: None, local_cipher(tmp_path.parent / f"{tmp_path.name}.json"))
    (common_name,) = read_certificate(tmp_path / "ca.crt").subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(common_name.value).endswith(f" CA ({ADDRESSES.public_ip})") and len(str(common_name.value)) <= 64


@pytest.mark.usefixtures("instant_retries")
def test_first_boot_waits_while_the_kms_grant_propagates(tmp_path: Path) -> None:
    kms = GrantOnItsWay(refusals=3)
    provision(tmp_path, "acme", ADDRESSES, lambda _: None, EnvelopeCipher(kms))
    assert kms.refusals == 0
    assert_ca_key_sealed(tmp_path, EnvelopeCipher(kms))


@pytest.mark.usefixtures("instant_retries")
def test_first_boot_that_cannot_wrap_the_ca_key_puts_no_secret_and_writes_nothing(tmp_path: Path) -> None:
    documents: list[str] = []
    with pytest.raises(FirstBootError, match=r"gave up wrapping the CA key .*AccessDeniedException"):
        provision(tmp_path, "acme", ADDRESSES, documents.append, EnvelopeCipher(GrantOnItsWay(refusals=10**6)))
    assert documents == [] and list(tmp_path.iterdir()) == []


def test_first_boot_hands_the_buyer_a_scrape_token_the_service_accepts(node: Node) -> None:
    assert_scrape_token_minted(node.conf, node.document, output="")


def test_a_failed_put_writes_no_scrape_token_and_the_retry_mints_a_fresh_one(tmp_path: Path) -> None:
    """The put comes before every file, so the retry's token, the one the buyer reads, is the one on disk."""
    cipher = local_cipher(tmp_path / KEYRING)
    conf = tmp_path / "conf"
    conf.mkdir()
    refused: list[str] = []

    def put_refused(document: str) -> None:
        refused.append(document)
        raise FirstBootError("PutSecretValue failed: ResourceNotFoundException")

    with pytest.raises(FirstBootError, match="PutSecretValue"):
        provision(conf, "acme", ADDRESSES, put_refused, cipher)
    assert list(conf.iterdir()) == []

    documents: list[str] = []
    provision(conf, "acme", ADDRESSES, documents.append, cipher)
    (refused_document,), (document,) = [json.loads(d) for d in refused], [json.loads(d) for d in documents]
    assert document["metrics_token"] != refused_document["metrics_token"]
    assert_scrape_token_minted(conf, document, output="")


# --- renewal ----------------------------------------------------------------------------------------------------


def test_a_certificate_far_from_expiry_is_left_untouched(node: Node) -> None:
    before = node.files()
    expiry = node.leaf().not_valid_after_utc
    for now in (dt.datetime.now(dt.UTC), expiry - 61 * DAY):
        renewal = renew(node.conf, kms_not_needed, now)
        assert not renewal.renewed and renewal.certificate == node.leaf()
    assert node.files() == before
    node.assert_scrape_token_kept()


def test_a_certificate_near_expiry_is_renewed_under_the_ca_clients_pinned(node: Node) -> None:
    old = node.leaf()
    kept = {name: data for name, data in node.files().items() if name in ("ca.crt", CA_KEY_FILE, "tenants.json")}

    renewal = renew(node.conf, lambda: node.cipher, old.not_valid_after_utc - 59 * DAY)

    new = node.leaf()
    assert renewal.renewed and renewal.certificate == new
    assert new.serial_number != old.serial_number and new.public_key() != old.public_key()
    new.verify_directly_issued_by(node.pinned_ca)  # raises unless the pinned CA signed it
    assert names(new) == names(old)
    assert lifetime(new).days <= 825
    assert {name: data for name, data in node.files().items() if name in kept} == kept
    assert stat.S_IMODE((node.conf / "tls.key").stat().st_mode) == 0o400
    assert_tls_serves(node.conf, host=ADDRESSES.host)  # the new key with the new certificate, trusted by clients
    node.assert_scrape_token_kept()


def test_renewal_today_gives_a_certificate_for_another_825_days(node: Node) -> None:
    issue_nearly_expired_leaf(node.conf, load_ca(node.conf, node.cipher))
    now = dt.datetime.now(dt.UTC)

    renewal = renew(node.conf, lambda: node.cipher, now)

    assert renewal.renewed
    assert now + 824 * DAY < renewal.certificate.not_valid_after_utc <= now + 825 * DAY
    renewal.certificate.verify_directly_issued_by(node.pinned_ca)


def test_a_node_without_a_stored_ca_key_is_told_what_to_do_and_gets_no_new_ca(node: Node) -> None:
    """As a node minted before renewal existed: its CA's key was never written."""
    (node.conf / CA_KEY_FILE).unlink()
    before = node.files()
    with pytest.raises(NoStoredCaKey) as raised:
        renew(node.conf, kms_not_needed, node.leaf().not_valid_after_utc - 30 * DAY)
    message = str(raised.value)
    assert f"{CA_KEY_FILE} does not exist" in message and "renew --new-ca" in message and RENEWAL_DOCS in message
    assert node.files() == before


def test_the_documented_manual_step_is_where_the_error_points() -> None:
    path, anchor = RENEWAL_DOCS.split("#")
    section: list[str] = []
    for line in (REPO / path).read_text().splitlines():
        if line.startswith("#"):
            if section:
                break
            if line.lstrip("#").strip().lower().replace(" ", "-") == anchor:
                section.append(line)
        elif section:
            section.append(line)
    assert section, f"no heading for #{anchor} in {path}"
    assert "-m marketplace.first_boot renew --new-ca" in "\n".join(section)


def test_a_new_ca_is_the_manual_step_and_renewals_go_on_under_it(node: Node) -> None:
    (node.conf / CA_KEY_FILE).unlink()
    old = node.leaf()

    ca = replace_ca(node.conf, node.cipher, dt.datetime.now(dt.UTC))

    assert (node.conf / "ca.crt").read_bytes() == ca.cert_pem
    assert ca.cert.public_key() != node.pinned_ca.public_key()
    assert_ca_key_sealed(node.conf, node.cipher)
    node.leaf().verify_directly_issued_by(ca.cert)
    assert names(node.leaf()) == names(old)
    renewal = renew(node.conf, lambda: node.cipher, node.leaf().not_valid_after_utc - 30 * DAY)
    assert renewal.renewed
    renewal.certificate.verify_directly_issued_by(ca.cert)
    node.assert_scrape_token_kept()


def test_a_stored_key_that_is_not_the_cas_is_refused(node: Node, tmp_path: Path) -> None:
    other = first_boot(tmp_path / "other")
    (node.conf / CA_KEY_FILE).write_bytes((other.conf / CA_KEY_FILE).read_bytes())
    node.keyring.write_bytes(other.keyring.read_bytes())  # the same KMS key opens it
    before = node.files()
    with pytest.raises(FirstBootError, match=f"{CA_KEY_FILE} does not hold the key of .*ca.crt"):
        renew(node.conf, lambda: local_cipher(node.keyring), node.leaf().not_valid_after_utc - 30 * DAY)
    assert node.files() == before


def test_a_ca_near_its_own_end_asks_for_a_new_one_instead_of_signing(node: Node) -> None:
    before = node.files()
    with pytest.raises(FirstBootError, match=r"CA in .*ca.crt expires on .*renew --new-ca"):
        renew(node.conf, lambda: node.cipher, node.pinned_ca.not_valid_after_utc - 30 * DAY)
    assert node.files() == before


# --- the command the timer runs ---------------------------------------------------------------------------------


@pytest.fixture
def node_settings(node: Node, monkeypatch: pytest.MonkeyPatch) -> Node:
    """foresight.env's KMS settings in the environment, as the renewal unit's container gets them."""
    monkeypatch.setenv("FORESIGHT_KMS_PROVIDER", "local")
    monkeypatch.setenv("FORESIGHT_KMS_KEY_ID", str(node.keyring))
    return node


def test_the_renew_command_renews_a_due_certificate_then_has_nothing_to_do(
    node_settings: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_settings
    issue_nearly_expired_leaf(node.conf, load_ca(node.conf, node.cipher))
    assert main(["renew", "--conf", str(node.conf)]) == 0
    output = capsys.readouterr()
    assert "new certificate for" in output.out
    assert node.document["metrics_token"] not in output.out + output.err
    node.leaf().verify_directly_issued_by(node.pinned_ca)
    node.assert_scrape_token_kept()
    before = node.files()
    assert main(["renew", "--conf", str(node.conf)]) == 0
    assert "renewal due" in capsys.readouterr().out
    assert node.files() == before


def test_the_renew_command_fails_with_one_clear_line_when_the_kms_cannot_open_the_key(
    node_settings: Node, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_settings
    issue_nearly_expired_leaf(node.conf, load_ca(node.conf, node.cipher))
    monkeypatch.setenv("FORESIGHT_KMS_KEY_ID", str(tmp_path / "not-the-nodes-keyring.json"))
    before = node.files()
    assert main(["renew", "--conf", str(node.conf)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("renew: cannot open ") and err.count("\n") == 1
    assert node.files() == before


def test_the_renew_command_on_a_node_without_a_stored_key_exits_non_zero_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    old_ca = CertificateAuthority.create("Foresight acme CA (198.51.100.7)", days=825)  # its key was thrown away
    conf.mkdir()
    (conf / "ca.crt").write_bytes(old_ca.cert_pem)
    issue_nearly_expired_leaf(conf, old_ca)
    assert main(["renew", "--conf", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "renew --new-ca" in err and RENEWAL_DOCS in err
    assert sorted(path.name for path in conf.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
