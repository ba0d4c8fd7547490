"""A FAKE of the Google Cloud Marketplace's partner APIs (Cloud Commerce Partner Procurement, Pub/Sub's pull
API on the partner's subscription, Service Control's `services.report`) and of the two Google identity pieces
they rely on (the OAuth token endpoint for a service account, and the x509 certificates that sign the sign-up
JWT), because none of them has a runnable implementation here. Built from Google's published references:
cloudcommerceprocurement.googleapis.com v1 (accounts and entitlements, their states and approve calls),
pubsub.googleapis.com v1 (`subscriptions.pull` / `acknowledge`), servicecontrol.googleapis.com v1
(`services.check` and its `checkErrors`, `services.report` and its `reportErrors`), the usage-reporting guide
("consumerId is the same as the usageReportingId from the entitlement"), and the SaaS integration guide's
sign-up JWT (RS256, `iss` = the certificates URL, `aud` = the partner's domain, `sub` = the Procurement
account).

It serves HTTPS with the suite's test CA, so google-auth's real service-account flow and PyJWT run unchanged.
What it enforces: the bearer token it issued on every API call (and a valid signed assertion to get one);
approvals only from the states the API allows; entitlements listed a page at a time (one per page, so a
caller that ignores `nextPageToken` misses some) and filtered by `account` and `productExternalName`; Pub/Sub
messages redelivered until acknowledged; Service Control operations de-duplicated by operation id and
refused (PERMISSION_DENIED) for a consumer that is not an active entitlement's usage reporting id, which
`services.check` answers with a check error. The guide says a disabled consumer gets a check error, not which:
SERVICE_NOT_ACTIVATED (the CheckError code "The consumer hasn't activated the service") is our pick, and
the client treats every code but the *_UNAVAILABLE ones and RESOURCE_EXHAUSTED alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.servers import http_server
from tests.tlsutil import PKI

PRODUCT = "foresight-saas.endpoints.foresight-partner.cloud.goog"  # the listing's product external name
CERTS_PATH = "/robot/v1/metadata/x509/cloud-commerce-partner@system.gserviceaccount.com"
_ACTIVE_FOR_USAGE = ("ENTITLEMENT_ACTIVE", "ENTITLEMENT_PENDING_CANCELLATION", "ENTITLEMENT_PENDING_PLAN_CHANGE",
                     "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL")


def _self_signed(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud-commerce-partner (fake)")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class GcpFake:
    provider: str
    audience: str
    service_name: str
    pki: PKI
    base: str = ""
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    entitlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # ack id -> message, until acknowledged
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)  # operation id -> operation
    checked: list[str] = field(default_factory=list)  # operation ids services.check was asked about
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    refuse_next: list[int] = field(default_factory=list)  # gRPC codes of reportErrors for the next operations
    tokens: set[str] = field(default_factory=set)
    signer: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    signer_kid: str = "fake-commerce-key-1"
    service_account: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def certs_url(self) -> str:
        return self.base + CERTS_PATH

    # -- what a test sets up ---------------------------------------------------------------------------------

    def key_file(self, directory: Path) -> Path:
        """The provider's service-account key, as GOOGLE_APPLICATION_CREDENTIALS names it (token_uri: here)."""
        pem = self.service_account.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()
        path = directory / "provider-sa.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "foresight-partner", "private_key_id": "k1",
            "private_key": pem, "client_email": "fulfilment@foresight-partner.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": f"{self.base}/token",
        }))
        return path

    def purchase(self, plan: str) -> tuple[str, str]:
        """A buyer's account (pending approval) with one order awaiting activation; (sign-up JWT, entitlement id)."""
        account_id, entitlement_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.accounts[account_id] = {"name": f"providers/{self.provider}/accounts/{account_id}",
                                     "state": "ACCOUNT_ACTIVATION_REQUESTED"}
        self.entitlements[entitlement_id] = {
            "name": f"providers/{self.provider}/entitlements/{entitlement_id}",
            "account": f"providers/{self.provider}/accounts/{account_id}", "provider": self.provider,
            "product": PRODUCT, "productExternalName": PRODUCT, "plan": plan,
            "state": "ENTITLEMENT_ACTIVATION_REQUESTED",
            # Real ids look like "project_number:212706713297"; Service Control takes them as they are.
            "usageReportingId": f"project_number:{uuid.UUID(entitlement_id).int % 10**12:012d}",
        }
        return self.signup_token(account_id), entitlement_id

    def signup_token(self, account_id: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.certs_url, "aud": self.audience, "sub": account_id, "iat": now, "exp": now + 300,
                  "google": {"roles": ["account_admin"]}, **overrides}
        return jwt.encode(claims, self.signer, algorithm="RS256", headers={"kid": self.signer_kid})

    def publish(self, event_type: str, entitlement_id: str | None = None, data: bytes | None = None) -> None:
        event: dict[str, Any] = {"eventId": str(uuid.uuid4()), "eventType": event_type}
        if entitlement_id:
            event["entitlement"] = {"id": entitlement_id, "updateTime": dt.datetime.now(dt.UTC).isoformat()}
        payload = data if data is not None else json.dumps(event).encode()
        self.messages[str(uuid.uuid4())] = {"data": base64.b64encode(payload).decode(),
                                            "messageId": str(uuid.uuid4())}

    def billed(self, entitlement_id: str) -> list[int]:
        consumer = self.entitlements[entitlement_id]["usageReportingId"]
        ordered = sorted(self.reported.values(), key=lambda op: op["startTime"])
        return [int(op["metricValueSets"][0]["metricValues"][0]["int64Value"])
                for op in ordered if op["consumerId"] == consumer]

    # -- identity ----------------------------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        try:
            # A service account's signed assertion always names Google's token endpoint as its audience.
            jwt.decode(form.get("assertion", ""), self.service_account.public_key(), algorithms=["RS256"],
                       audience="https://oauth2.googleapis.com/token")
        except jwt.PyJWTError as err:
            return 400, {"error": "invalid_grant", "error_description": str(err)}
        token = "ya29.fake-" + uuid.uuid4().hex
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    # -- the APIs ----------------------------------------------------------------------------------------------

    def api(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if self.fail_next:
            return self.fail_next.pop(0), {"error": {"code": 503, "message": "backend unavailable"}}
        prefix = f"/v1/providers/{self.provider}/"
        if path.startswith(prefix):
            return self._procurement(method, path.removeprefix(prefix), query, body)
        if path.startswith("/v1/projects/") and ":" in path:
            return self._pubsub(path.rsplit(":", 1)[1], body)
        if path == f"/v1/services/{self.service_name}:report":
            return self._report(body)
        if path == f"/v1/services/{self.service_name}:check":
            return self._check(body)
        return 404, {"error": {"code": 404, "message": f"{method} {path}"}}

    def _procurement(self, method: str, rest: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        kind, _, tail = rest.partition("/")
        item, _, verb = tail.partition(":")
        if kind == "entitlements" and not item and method == "GET":
            terms = dict(term.partition("=")[::2] for term in query.get("filter", [""])[0].split(" AND ") if term)
            found = [e for e in self.entitlements.values()
                     if e["account"].endswith(f"/accounts/{terms.get('account', '')}") or "account" not in terms
                     if terms.get("productExternalName", e["productExternalName"]) == e["productExternalName"]]
            start = int(query.get("pageToken", ["0"])[0] or 0)
            reply: dict[str, Any] = {"entitlements": found[start:start + 1]}
            if start + 1 < len(found):
                reply["nextPageToken"] = str(start + 1)
            return 200, reply
        table = self.accounts if kind == "accounts" else self.entitlements
        resource = table.get(item)
        if resource is None:
            return 404, {"error": {"code": 404, "message": f"{kind}/{item} not found"}}
        if method == "GET" and not verb:
            return 200, dict(resource)
        allowed = {("accounts", "approve"): ("ACCOUNT_ACTIVATION_REQUESTED", "ACCOUNT_ACTIVE"),
                   ("entitlements", "approve"): ("ENTITLEMENT_ACTIVATION_REQUESTED", "ENTITLEMENT_ACTIVE"),
                   ("entitlements", "approvePlanChange"): ("ENTITLEMENT_ACTIVE",),
                   ("entitlements", "rejectPlanChange"): ("ENTITLEMENT_ACTIVE",)}
        after = allowed.get((kind, verb))
        if method != "POST" or after is None:
            return 404, {"error": {"code": 404, "message": f"{verb} not faked"}}
        if verb.endswith("PlanChange"):
            if resource["state"] != "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL" or body.get(
                    "pendingPlanName") != resource.get("newPendingPlan"):
                return 400, {"error": {"code": 400, "message": "no such pending plan change"}}
            if verb == "approvePlanChange":
                resource["plan"] = resource["newPendingPlan"]
            resource.pop("newPendingPlan")
        elif resource["state"] not in after:
            return 400, {"error": {"code": 400, "message": f"cannot approve in state {resource['state']}"}}
        resource["state"] = after[-1]
        return 200, {}

    def _pubsub(self, verb: str, body: Any) -> tuple[int, Any]:
        if verb == "pull":
            batch = list(self.messages.items())[: int(body.get("maxMessages", 10))]
            return 200, {"receivedMessages": [{"ackId": ack, "message": m} for ack, m in batch]}
        if verb == "acknowledge":
            for ack in body.get("ackIds", []):
                self.messages.pop(ack, None)
            return 200, {}
        return 404, {"error": {"code": 404, "message": verb}}

    def _active_consumers(self) -> set[str]:
        return {e["usageReportingId"] for e in self.entitlements.values() if e["state"] in _ACTIVE_FOR_USAGE}

    def _check(self, body: Any) -> tuple[int, Any]:
        operation = body.get("operation", {})
        self.checked.append(operation["operationId"])
        if operation.get("consumerId") in self._active_consumers():
            return 200, {"operationId": operation["operationId"], "serviceConfigId": "2026-11-27r0"}
        return 200, {"operationId": operation["operationId"], "serviceConfigId": "2026-11-27r0", "checkErrors": [
            {"code": "SERVICE_NOT_ACTIVATED", "detail": "the consumer is not an active entitlement"}]}

    def _report(self, body: Any) -> tuple[int, Any]:
        active = self._active_consumers()
        errors = []
        for operation in body.get("operations", []):
            if self.refuse_next:
                code = self.refuse_next.pop(0)
                errors.append({"operationId": operation["operationId"], "status": {"code": code, "message": "no"}})
            elif operation["consumerId"] not in active:
                errors.append({"operationId": operation["operationId"],
                               "status": {"code": 7, "message": "consumer is not an active entitlement"}})
            else:
                self.reported.setdefault(operation["operationId"], operation)  # the same id counts once
        return 200, {"reportErrors": errors, "serviceConfigId": "2026-11-27r0"}


def _answer(fake: GcpFake, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str]:
    url = urlsplit(path)
    with fake.lock:
        if url.path == CERTS_PATH:
            status, reply = 200, {fake.signer_kid: _self_signed(fake.signer)}
        elif url.path == "/token":
            status, reply = fake.token({k: v[0] for k, v in parse_qs(raw.decode()).items()})
        elif {k.lower(): v for k, v in headers.items()}.get("authorization", "").removeprefix("Bearer ") \
                not in fake.tokens:
            status, reply = 401, {"error": {"code": 401, "message": "Request had invalid authentication"}}
        else:
            body = json.loads(raw) if raw else {}
            fake.calls.append((method, url.path, body))
            status, reply = fake.api(method, url.path, parse_qs(url.query), body)
    return status, json.dumps(reply)


@contextmanager
def gcp_fake(pki: PKI, service_name: str) -> Iterator[GcpFake]:
    fake = GcpFake("foresight-partner", "foresight.example.com", service_name, pki)
    with http_server(lambda *request: _answer(fake, *request), tls=(pki.cert, pki.key), host="localhost") as url:
        fake.base = url
        yield fake
