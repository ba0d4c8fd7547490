"""How a node proves itself to the shared tier: a password file, or its cloud identity with no stored secret.

redis-py asks the credential provider for (username, password) whenever it opens a connection, so every
connection gets a fresh credential; tokens are cached until a few minutes before they expire.
- password: the file's content, re-read each time (a rotated password needs no restart);
- aws: ElastiCache IAM auth. The password is a SigV4-presigned `connect` request for the replication group and
  the ElastiCache user, valid 15 minutes, signed with the pod's or node's role (IRSA, instance profile);
- gcp: Memorystore for Valkey IAM auth. The password is the service account's OAuth access token (Application
  Default Credentials: the GKE metadata server under Workload Identity), sent as `AUTH <token>`;
- azure: Azure Cache for Redis with Entra ID. The user is the managed identity's object id and the password an
  access token for https://redis.azure.com (azure-identity: AKS workload identity, or the VM's identity).
Tokens expire while connections stay open: ElastiCache closes IAM connections after 12 hours and Azure when the
token runs out, so `renew_after_s` says when the invalidation subscription should move to a fresh connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError

from service.config import ConfigError, Settings

AWS_TOKEN_TTL_S = 900  # ElastiCache accepts a token for 15 minutes after it is signed
AZURE_REDIS_SCOPE = "https://redis.azure.com/.default"
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN_S = 300  # a cached token is replaced this long before it expires


class TierAuthError(RedisConnectionError):
    """No credential could be had (metadata server, STS, Entra down): counts as the tier failing."""


class TierCredentials(CredentialProvider):
    """A (username, password) pair, cached until `expires_at` minus a margin; computed off the event loop."""

    renew_after_s: float | None = None  # how long a connection's credential stays good; None: for ever

    def __init__(self, username: str | None) -> None:
        self.username = username
        self._cached: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def fetch(self) -> tuple[str, float]:
        """A fresh password and when it expires (time.time()); blocking calls are fine here."""
        raise NotImplementedError

    def password(self) -> str:
        with self._lock:
            if self._cached is None or self._cached[1] - REFRESH_MARGIN_S <= time.time():
                self._cached = self.fetch()
            return self._cached[0]

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = self.password()
        except Exception as err:  # whatever the cloud SDK raised: the tier is unreachable, not the service broken
            raise TierAuthError(f"no credential for the shared tier ({type(err).__name__}: {err})") from None
        return (self.username, password) if self.username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return await asyncio.to_thread(self.get_credentials)


class PasswordFile(TierCredentials):
    def __init__(self, username: str | None, path: Path | None) -> None:
        super().__init__(username)
        self.path = path

    def fetch(self) -> tuple[str, float]:
        if self.path is None:
            return "", float("inf")
        return self.path.read_text().strip(), time.time()  # expired at once: read again next connection


class ElastiCacheIam(TierCredentials):
    renew_after_s = 11 * 3600.0  # ElastiCache closes IAM-authenticated connections after 12 hours

    def __init__(self, user_id: str, cache: str, region: str, credentials: Any = None) -> None:
        super().__init__(user_id)
        self.cache, self.region, self._credentials = cache, region, credentials

    def fetch(self) -> tuple[str, float]:
        from botocore.auth import SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.session import get_session

        credentials = self._credentials or get_session().get_credentials()
        if credentials is None:
            raise ConfigError("shared_tier_auth aws: no AWS credentials (IRSA web identity, instance profile or "
                              "environment)")
        query = urlencode({"Action": "connect", "User": self.username})
        request = AWSRequest(method="GET", url=f"https://{self.cache}/?{query}")
        SigV4QueryAuth(credentials, "elasticache", self.region, expires=AWS_TOKEN_TTL_S).add_auth(request)
        return str(request.url).removeprefix("https://"), time.time() + AWS_TOKEN_TTL_S


class GoogleAccessToken(TierCredentials):
    renew_after_s = 45 * 60.0

    def __init__(self, credentials: Any = None) -> None:
        super().__init__(None)
        self._credentials = credentials

    def fetch(self) -> tuple[str, float]:
        import google.auth
        from google.auth.transport.requests import Request

        if self._credentials is None:
            self._credentials, _ = google.auth.default(scopes=[GCP_SCOPE])
        self._credentials.refresh(Request())
        expiry = self._credentials.expiry
        return self._credentials.token, expiry.timestamp() if expiry else time.time() + 3000


class EntraToken(TierCredentials):
    renew_after_s = 45 * 60.0

    def __init__(self, object_id: str, credential: Any = None) -> None:
        super().__init__(object_id)
        self._credential = credential

    def fetch(self) -> tuple[str, float]:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        token = self._credential.get_token(AZURE_REDIS_SCOPE)
        return token.token, float(token.expires_on)


def _aws_region() -> str:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ConfigError("shared_tier_auth aws needs the region: set AWS_REGION")
    return region


_BUILDERS: dict[str, Callable[[Settings], TierCredentials]] = {
    "password": lambda s: PasswordFile(s.shared_tier_username, s.shared_tier_password_file),
    "aws": lambda s: ElastiCacheIam(s.shared_tier_username or "", s.shared_tier_aws_cache or "", _aws_region()),
    "gcp": lambda s: GoogleAccessToken(),
    "azure": lambda s: EntraToken(s.shared_tier_username or ""),
}


def tier_credentials(settings: Settings) -> TierCredentials | None:
    """The provider `shared_tier_auth` names; None for a tier without AUTH (password auth, no file, no user)."""
    if settings.shared_tier_auth == "password" and not (
        settings.shared_tier_password_file or settings.shared_tier_username
    ):
        return None
    return _BUILDERS[settings.shared_tier_auth](settings)
