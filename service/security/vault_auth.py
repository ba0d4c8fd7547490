"""Log the service in to Vault and keep its token alive.

Methods: `token` (a token or a token file kept fresh by Vault Agent), `approle` (local and on-prem),
`aws` (IAM auth: a signed sts:GetCallerIdentity request, signed here with botocore exactly as Vault's own
CLI does, from the instance profile's credentials), `gcp` (gce-type login with the VM's identity token from
the metadata server), `azure` (the managed identity's token from IMDS plus the VM's identity), and `jwt`
(any OIDC token: from a file such as a Kubernetes service-account token, or the GCP / Azure metadata
endpoints, verified by Vault's jwt auth method; this is how cloud identities log in to OpenBao, which ships
no aws/gcp/azure auth plugins).

`VaultSession` owns one hvac client: it renews the token before it expires and logs in again when renewal
can no longer extend it, updating the token *in place*, so everything holding `session.client` (the key
source, the transit KMS, PKI issuance) carries on. A token can also stop working early (revoked during an
incident, Vault restored from a backup): Vault then answers every call Forbidden, so a Forbidden answer to a
call made with the session's token logs in again at once (at most once per `relogin_interval`: a policy
that really forbids the path must not become a login storm) and the call is retried once with the new
token. Everything here blocks; the renewal loop is a daemon thread. Secrets are `SecretStr` and never appear
in logs or error messages.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import hvac
import hvac.adapters
import hvac.exceptions
import requests
from pydantic import BaseModel, Field, SecretStr

log = logging.getLogger(__name__)

STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
GCP_METADATA = "http://metadata.google.internal"
AZURE_IMDS = "http://169.254.169.254"


class VaultAuthError(RuntimeError):
    """Login or renewal failed; the message names the method and what to check, never a secret."""


class VaultSessionStopped(requests.ConnectionError):
    """A call through a stopped session's client: Vault is out of reach for the service from now on."""


class VaultAuthSettings(BaseModel):
    addr: str = Field(default="http://127.0.0.1:8200", description="Vault address.")
    method: Literal["token", "approle", "aws", "gcp", "azure", "jwt"] = "token"
    mount: str | None = Field(default=None, description="Auth mount path; default: the method's name.")
    role: str | None = Field(default=None, description="Vault role (aws, gcp, azure, jwt).")
    namespace: str | None = None
    ca_cert: Path | None = Field(default=None, description="CA bundle for Vault's TLS certificate.")
    timeout: float = Field(2.0, gt=0, description="Seconds per Vault request; bounds AUTH latency when Vault is away.")
    token: SecretStr | None = None
    token_file: Path | None = Field(default=None, description="token: re-read on every login (a Vault Agent sink).")
    role_id: str | None = None
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    aws_sts_url: str = Field("https://sts.amazonaws.com/", description="Must match the Vault server's sts_endpoint.")
    aws_sts_region: str = Field(default="us-east-1", description="Must match the Vault server's sts_region.")
    aws_header_value: str | None = Field(None, description="X-Vault-AWS-IAM-Server-ID, if the server requires it.")
    gcp_audience: str | None = Field(None, description="Identity token audience; default http://vault/<role>.")
    gcp_metadata_url: str = GCP_METADATA
    azure_resource: str = "https://management.azure.com/"
    azure_client_id: str | None = Field(default=None, description="Client id of a user-assigned managed identity.")
    azure_imds_url: str = AZURE_IMDS
    jwt_source: Literal["file", "gcp", "azure"] = "file"
    jwt_file: Path | None = None


def new_client(
    settings: VaultAuthSettings, adapter: type[hvac.adapters.Adapter] = hvac.adapters.JSONAdapter
) -> hvac.Client:
    """An unauthenticated client for `settings.addr` with the request timeout and CA bundle set."""
    verify: bool | str = str(settings.ca_cert) if settings.ca_cert else True
    return hvac.Client(
        url=settings.addr, timeout=settings.timeout, verify=verify, namespace=settings.namespace, adapter=adapter
    )


def login(settings: VaultAuthSettings, client: hvac.Client | None = None) -> dict[str, Any]:
    """Authenticate `client` (in place) with the configured method; returns Vault's `auth` block. Blocks."""
    client = client or new_client(settings)
    method = settings.method
    mount = settings.mount or method
    try:
        if method == "token":
            client.token = _token(settings)
            return _token_auth(client)
        if method == "approle":
            secret_id = _secret(settings.secret_id, settings.secret_id_file, "secret_id")
            if not settings.role_id:
                raise VaultAuthError("approle login needs the role id: set FORESIGHT_VAULT_ROLE_ID")
            reply = client.auth.approle.login(settings.role_id, secret_id, mount_point=mount)
        elif method == "aws":
            payload = aws_iam_login_payload(
                role=_role(settings),
                sts_url=settings.aws_sts_url,
                region=settings.aws_sts_region,
                header_value=settings.aws_header_value,
            )
            reply = client.adapter.login(f"/v1/auth/{mount}/login", json=payload)
        elif method == "gcp":
            role = _role(settings)
            jwt = gcp_identity_token(settings.gcp_audience or f"http://vault/{role}", settings.gcp_metadata_url)
            reply = client.auth.gcp.login(role, jwt, mount_point=mount)
        elif method == "azure":
            jwt = azure_msi_token(settings.azure_resource, settings.azure_client_id, settings.azure_imds_url)
            vm = azure_instance_metadata(settings.azure_imds_url)
            reply = client.auth.azure.login(
                _role(settings),
                jwt,
                subscription_id=vm["subscriptionId"],
                resource_group_name=vm["resourceGroupName"],
                vm_name=None if vm.get("vmScaleSetName") else vm["name"],
                vmss_name=vm.get("vmScaleSetName") or None,
                mount_point=mount,
            )
        else:
            reply = client.auth.jwt.jwt_login(_role(settings), _jwt(settings), path=mount)
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as err:
        raise VaultAuthError(
            f"Vault refused the {method} login at auth/{mount} ({type(err).__name__}); check the role and its bindings"
        ) from None
    except hvac.exceptions.InvalidPath:
        raise VaultAuthError(f"no {method} auth method mounted at auth/{mount}") from None
    except requests.RequestException as err:
        raise VaultAuthError(
            f"cannot reach Vault at {settings.addr} for {method} login ({type(err).__name__})"
        ) from None
    except hvac.exceptions.VaultError as err:  # sealed, rate-limited, internal error
        raise VaultAuthError(f"Vault failed the {method} login ({type(err).__name__}); retry later") from None
    auth: dict[str, Any] = reply["auth"]
    log.info(
        "logged in to Vault with %s (policies %s, ttl %ss)",
        method,
        auth.get("policies"),
        auth.get("lease_duration"),
    )
    return auth


# -- cloud identity proofs -----------------------------------------------------------------------------------


def aws_iam_login_payload(
    *,
    role: str | None,
    sts_url: str = "https://sts.amazonaws.com/",
    region: str = "us-east-1",
    header_value: str | None = None,
    credentials: Any = None,
) -> dict[str, str]:
    """The body of an aws-auth IAM login: a sts:GetCallerIdentity request signed with SigV4 (not sent to AWS).

    Vault replays the request to STS, which answers with the caller's ARN only if the signature is valid.
    `credentials`: botocore credentials; default: the standard chain (env, instance profile via IMDSv2).
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.session import get_session

    creds = credentials or get_session().get_credentials()
    if creds is None:
        raise VaultAuthError("aws login: no AWS credentials found (instance profile, environment or profile)")
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if header_value:
        headers["X-Vault-AWS-IAM-Server-ID"] = header_value
    request = AWSRequest(method="POST", url=sts_url, data=STS_BODY, headers=headers)
    SigV4Auth(
        creds.get_frozen_credentials() if hasattr(creds, "get_frozen_credentials") else creds, "sts", region
    ).add_auth(request)
    signed = {name: [value] for name, value in request.headers.items()}
    payload = {
        "iam_http_request_method": "POST",
        "iam_request_url": _b64(sts_url),
        "iam_request_body": _b64(STS_BODY),
        "iam_request_headers": _b64(json.dumps(signed)),
    }
    if role:
        payload["role"] = role
    return payload


def gcp_identity_token(audience: str, metadata_url: str = GCP_METADATA, account: str = "default") -> str:
    """The VM service account's identity token (format=full, for gce login) from the metadata server."""
    query = urlencode({"audience": audience, "format": "full"})
    url = f"{metadata_url}/computeMetadata/v1/instance/service-accounts/{account}/identity?{query}"
    return _metadata_get(url, {"Metadata-Flavor": "Google"}, "GCP metadata server").text.strip()


def azure_msi_token(resource: str, client_id: str | None = None, imds_url: str = AZURE_IMDS) -> str:
    """A managed-identity access token for `resource` from the Azure Instance Metadata Service."""
    params = {"api-version": "2018-02-01", "resource": resource}
    if client_id:
        params["client_id"] = client_id
    reply = _metadata_get(
        f"{imds_url}/metadata/identity/oauth2/token?{urlencode(params)}", {"Metadata": "true"}, "Azure IMDS"
    ).json()
    return str(reply["access_token"])


def azure_instance_metadata(imds_url: str = AZURE_IMDS) -> dict[str, Any]:
    """The VM's compute metadata (subscriptionId, resourceGroupName, name, vmScaleSetName) from IMDS."""
    reply = _metadata_get(f"{imds_url}/metadata/instance?api-version=2021-02-01", {"Metadata": "true"}, "Azure IMDS")
    compute: dict[str, Any] = reply.json()["compute"]
    return compute


def _metadata_get(url: str, headers: dict[str, str], what: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False  # metadata endpoints are link-local: never through a proxy
    try:
        reply = session.get(url, headers=headers, timeout=2.0)
        reply.raise_for_status()
        return reply
    except requests.RequestException as err:
        raise VaultAuthError(
            f"cannot get an identity token from the {what} ({type(err).__name__}); "
            "is this a VM with an identity attached?"
        ) from None
    finally:
        session.close()


# -- the session ---------------------------------------------------------------------------------------------


class _SessionAdapter(hvac.adapters.JSONAdapter):
    """The session client's transport: a Forbidden answer may mean the token was revoked, so the session is
    asked to log in again and the request is retried once; a stopped session's client sends nothing."""

    owner: VaultSession | None = None  # `session` is the adapter's requests.Session

    def request(self, *args: Any, **kwargs: Any) -> Any:
        session = self.owner
        if session is not None and session.stopped:
            raise VaultSessionStopped("the Vault session is stopped")
        token = self.token
        try:
            return super().request(*args, **kwargs)
        except hvac.exceptions.Forbidden:
            if session is None or not session.relogin_after_forbidden(token):
                raise
        return super().request(*args, **kwargs)


class VaultSession:
    """An authenticated client whose token is renewed, and replaced by a new login when it must be."""

    def __init__(
        self,
        settings: VaultAuthSettings,
        *,
        renew_fraction: float = 2 / 3,
        relogin_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = new_client(settings, _SessionAdapter)
        self.client.adapter.owner = self
        # Logins go through a plain client, whose Forbidden (a refused login) never asks for another login.
        self._login_client = new_client(settings)
        self.renew_fraction = renew_fraction
        self.relogin_interval = relogin_interval
        self._clock = clock
        self._expires_at: float | None = None
        self._lease = self._login_lease = 0.0
        self._renewable = False
        self._lock = threading.RLock()  # one login or renewal at a time; the renewal's own retry re-enters
        self._forced_login_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.logins = 0
        self.renewals = 0

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def login(self) -> None:
        """Log in now (the first time, or after the token became unusable). Blocks."""
        with self._lock:
            self._note(login(self.settings, self._login_client))
            self.client.token = self._login_client.token
            self._login_lease = self._lease
            self.logins += 1

    def relogin_after_forbidden(self, token: str | None) -> bool:
        """Vault answered Forbidden to a call made with `token`: log in again unless that happened less than
        `relogin_interval` ago. True if the call is worth retrying (the client holds another token now). Blocks."""
        with self._lock:
            if self.client.token != token:
                return True  # another call logged in again meanwhile
            now = self._clock()
            if self._forced_login_at is not None and now - self._forced_login_at < self.relogin_interval:
                return False
            if self.stopped or not self._can_log_in_again():
                return False
            self._forced_login_at = now
            log.warning("Vault refused a call with the service token (Forbidden); logging in again in case the "
                        "token was revoked")
            try:
                self.login()
            except VaultAuthError as err:
                log.error("Vault login after a refused call failed: %s", err)
                return False
            return True

    def refresh_if_needed(self) -> None:
        """Renew once `renew_fraction` of the lease is used; log in again if renewal falls short. Blocks."""
        with self._lock:
            self._refresh_if_needed()

    def _refresh_if_needed(self) -> None:
        if self._expires_at is None:
            return  # a token without expiry (root, periodic without ttl) needs nothing
        remaining = self._expires_at - self._clock()
        if remaining > self._lease * (1 - self.renew_fraction):
            return
        if self._renewable:
            try:
                auth = self.client.auth.token.renew_self()["auth"]
                self._note(auth)
                self.renewals += 1
                # A renewal granting less than a fresh login would means the max TTL is near: log in again.
                if self._lease >= self._login_lease * (1 - self.renew_fraction):
                    return
                log.info("Vault token renewal reached its max TTL; logging in again")
            except (hvac.exceptions.VaultError, requests.RequestException) as err:
                log.warning("Vault token renewal failed (%s); logging in again", type(err).__name__)
        if not self._can_log_in_again():
            log.error("the Vault token cannot be renewed further and there is no way to log in again")
            return
        self.login()

    def _can_log_in_again(self) -> bool:
        """False for a token given as a value: logging in again would only present the same token."""
        return self.settings.method != "token" or self.settings.token_file is not None

    def start(self, check_interval: float = 5.0) -> None:
        """Log in (if not yet) and renew in a daemon thread until `stop`."""
        if self._expires_at is None and self.logins == 0:
            self.login()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(check_interval,), name="vault-renewal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, and make every later call through `client` fail at once (`VaultSessionStopped`).

        A read the service abandoned at shutdown (a tenant listing is one Vault request per tenant) then ends
        with its current request instead of going on, and the process's exit does not wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self, check_interval: float) -> None:
        while not self._stop.is_set():
            wait = check_interval
            if self._expires_at is not None:
                wait = min(check_interval, max(0.05, self._lease * (1 - self.renew_fraction) / 4))
            if self._stop.wait(wait):
                return
            try:
                self.refresh_if_needed()
            except VaultAuthError as err:
                log.error("Vault login failed: %s", err)
            except Exception as err:  # the loop must survive a Vault outage
                log.error("Vault token refresh failed: %s", type(err).__name__)

    def _note(self, auth: dict[str, Any]) -> None:
        lease = float(auth.get("lease_duration") or 0)
        self._lease, self._renewable = lease, bool(auth.get("renewable"))
        self._expires_at = self._clock() + lease if lease > 0 else None


def _token_auth(client: hvac.Client) -> dict[str, Any]:
    data = client.auth.token.lookup_self()["data"]
    return {
        "lease_duration": data.get("ttl", 0),
        "renewable": data.get("renewable", False),
        "policies": data.get("policies"),
    }


def _token(settings: VaultAuthSettings) -> str:
    return _secret(settings.token, settings.token_file, "token")


def _jwt(settings: VaultAuthSettings) -> str:
    if settings.jwt_source == "gcp":
        return gcp_identity_token(settings.gcp_audience or f"http://vault/{_role(settings)}", settings.gcp_metadata_url)
    if settings.jwt_source == "azure":
        return azure_msi_token(settings.azure_resource, settings.azure_client_id, settings.azure_imds_url)
    if settings.jwt_file is None:
        raise VaultAuthError("jwt login needs FORESIGHT_VAULT_JWT_FILE, or FORESIGHT_VAULT_JWT_SOURCE gcp or azure")
    return settings.jwt_file.read_text().strip()


def _secret(value: SecretStr | None, file: Path | None, what: str) -> str:
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as err:
            raise VaultAuthError(f"cannot read the {what} file {file}: {err.strerror}") from None
    if value is None:
        raise VaultAuthError(f"Vault login needs the {what}: set FORESIGHT_VAULT_{what.upper()}_FILE to a file "
                             "holding it")
    return value.get_secret_value()


def _role(settings: VaultAuthSettings) -> str:
    if not settings.role:
        raise VaultAuthError(f"{settings.method} login needs a Vault role: set FORESIGHT_VAULT_ROLE")
    return settings.role


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
