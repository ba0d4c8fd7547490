"""The endpoint's TLS: a private CA and a server certificate for the endpoint host, made with pulumi-tls.

Private keys exist only as Pulumi secrets (encrypted in state) and in Vault, which is how they reach the node;
they never appear in user data or in a plaintext output. `pulumi up` renews the server certificate once it is
within `RENEW_BEFORE_HOURS` of expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

CA_VALIDITY_HOURS = 5 * 365 * 24
SERVER_VALIDITY_HOURS = 365 * 24
RENEW_BEFORE_HOURS = 30 * 24


@dataclass(frozen=True)
class ServerTls:
    """The CA and server certificate children, and the PEM outputs the node needs."""

    ca_key: tls.PrivateKey
    ca: tls.SelfSignedCert
    server_key: tls.PrivateKey
    server_cert: tls.LocallySignedCert

    @property
    def ca_certificate(self) -> pulumi.Output[str]:
        return self.ca.cert_pem

    @property
    def material(self) -> pulumi.Output[dict[str, str]]:
        """What the node reads from Vault, named like Vault PKI's issue response; a secret Output."""
        return pulumi.Output.secret(
            pulumi.Output.all(self.server_cert.cert_pem, self.server_key.private_key_pem, self.ca.cert_pem).apply(
                lambda pems: {"certificate": pems[0], "private_key": pems[1], "issuing_ca": pems[2]}
            )
        )


def create_server_tls(
    name: str,
    common_name: str,
    parent: pulumi.Resource,
    dns_names: pulumi.Input[list[str]] | None = None,
    ip_addresses: pulumi.Input[list[str]] | None = None,
) -> ServerTls:
    """A CA named after the stack and a server certificate for the endpoint, all children of `parent`.

    The endpoint is a DNS name where the load balancer has one (AWS; Azure's public address) and an IP address
    where it does not (Google Cloud; Azure's private frontend): clients check whichever name is there."""
    opts = pulumi.ResourceOptions(parent=parent)
    ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    ca = tls.SelfSignedCert(
        f"{name}-ca",
        private_key_pem=ca_key.private_key_pem,
        is_ca_certificate=True,
        subject=tls.SelfSignedCertSubjectArgs(common_name=f"{common_name} CA", organization="Foresight"),
        validity_period_hours=CA_VALIDITY_HOURS,
        allowed_uses=["cert_signing", "crl_signing"],
        opts=opts,
    )
    server_key = tls.PrivateKey(f"{name}-server-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    request = tls.CertRequest(
        f"{name}-server-csr",
        private_key_pem=server_key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=common_name, organization="Foresight"),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        opts=opts,
    )
    server_cert = tls.LocallySignedCert(
        f"{name}-server-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=ca_key.private_key_pem,
        ca_cert_pem=ca.cert_pem,
        validity_period_hours=SERVER_VALIDITY_HOURS,
        early_renewal_hours=RENEW_BEFORE_HOURS,
        allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
        opts=opts,
    )
    return ServerTls(ca_key=ca_key, ca=ca, server_key=server_key, server_cert=server_cert)
