"""FAKES of cloud metadata endpoints and of Vault's aws auth plugin, for the Vault login tests.

There is no cloud here, so:
- `FakeMetadata` stands in for the GCE metadata server and Azure IMDS: plain HTTP on loopback serving the
  same paths, demanding the same headers (Metadata-Flavor: Google / Metadata: true), and issuing RS256 JWTs
  signed by a test key instead of Google's or Entra ID's.
- `FakeVaultAwsAuth` stands in for Vault's aws auth plugin, which OpenBao does not ship: it does what that
  plugin does with a login (decode the signed sts:GetCallerIdentity request and replay it to STS), against
  the moto server, which checks the SigV4 signature for real, then answers like Vault does.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.servers import http_server


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class JwtIssuer:
    """Signs RS256 JWTs the way a cloud identity provider would (with a test key)."""

    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, claims: dict[str, Any]) -> str:
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
        payload = b64url(json.dumps(claims).encode())
        signature = self.key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(signature)}"


@dataclass
class FakeMetadata:
    issuer: JwtIssuer
    url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    vm: dict[str, str] = field(
        default_factory=lambda: {
            "subscriptionId": "sub-1",
            "resourceGroupName": "rg-foresight",
            "name": "foresight-vm-0",
            "vmScaleSetName": "",
        }
    )

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        self.requests.append((path, headers))
        parsed = urllib.parse.urlparse(path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        now = int(time.time())
        if parsed.path.startswith("/computeMetadata/v1/instance/service-accounts/"):
            if headers.get("Metadata-Flavor") != "Google":
                return 403, "missing Metadata-Flavor header"
            claims = {
                "iss": "https://accounts.google.com",
                "aud": query["audience"],
                "iat": now,
                "exp": now + 600,
                "sub": "1234567890",
                "email": "foresight@p.iam.gserviceaccount.com",
            }
            return 200, self.issuer.sign(claims)
        if parsed.path == "/metadata/identity/oauth2/token":
            if headers.get("Metadata") != "true":
                return 400, json.dumps({"error": "missing Metadata header"})
            claims = {
                "iss": "https://sts.windows.net/tenant/",
                "aud": query["resource"],
                "iat": now,
                "exp": now + 600,
                "sub": query.get("client_id", "system-assigned"),
            }
            return 200, json.dumps({"access_token": self.issuer.sign(claims), "expires_in": "600"})
        if parsed.path == "/metadata/instance":
            if headers.get("Metadata") != "true":
                return 400, "missing Metadata header"
            return 200, json.dumps({"compute": self.vm})
        return 404, "not found"


@contextmanager
def fake_metadata(issuer: JwtIssuer) -> Iterator[FakeMetadata]:
    fake = FakeMetadata(issuer)
    with http_server(lambda _m, path, headers, _b: fake.answer(path, headers)) as url:
        fake.url = url
        yield fake


@contextmanager
def fake_vault_aws_auth(sts_endpoint: str, role: str, server_id: str) -> Iterator[str]:
    """Vault's aws auth login endpoint, replaying the signed request to `sts_endpoint` (moto)."""

    def answer(method: str, path: str, _headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if method not in ("POST", "PUT") or path != "/v1/auth/aws/login":
            return 404, json.dumps({"errors": ["no handler for route"]})
        login = json.loads(body)
        url = base64.b64decode(login["iam_request_url"]).decode()
        signed = json.loads(base64.b64decode(login["iam_request_headers"]))
        if signed.get("X-Vault-AWS-IAM-Server-ID") != [server_id] or login.get("role") != role:
            return 400, json.dumps({"errors": ["missing or wrong X-Vault-AWS-IAM-Server-ID or role"]})
        headers = {k: v[0] for k, v in signed.items()}
        headers["Host"] = urllib.parse.urlparse(url).netloc
        reply = requests.post(
            sts_endpoint + "/", data=base64.b64decode(login["iam_request_body"]), headers=headers, timeout=5
        )
        if reply.status_code != 200:
            return 400, json.dumps({"errors": [f"error making upstream request: {reply.status_code}"]})
        arn = reply.text.split("<Arn>")[1].split("</Arn>")[0]
        auth = {
            "client_token": "s.fake-aws-token",
            "accessor": "a",
            "policies": ["foresight-service"],
            "lease_duration": 60,
            "renewable": True,
            "metadata": {"canonical_arn": arn},
        }
        return 200, json.dumps({"auth": auth})

    with http_server(answer) as url:
        yield url
