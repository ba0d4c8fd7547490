"""Service configuration: one pydantic-settings model, read from FORESIGHT_* variables and an optional file.

Production refuses to start without TLS and a key source; `dev` mode binds loopback only and serves one
tenant without AUTH, like Redis's protected mode.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AllowInfNan, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from service.origin.urls import check_origin_url
from service.prefetch.markov import DEFAULT_MAX_KEYS, MIN_MAX_KEYS
from service.prefetch.mlops.ab import check_weights
from service.store.policies import POLICIES


class ConfigError(ValueError):
    """Configuration that cannot run; the message names the setting (and its variable) to fix."""


# Hosts reached without crossing a network: plain http or redis to them carries no secret over the wire.
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

def shared_tier_url_problem(url: str) -> str | None:
    """Why a shared tier URL cannot be used, or None: TLS unless the tier is on this machine, no secret in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("rediss", "redis") or not parts.hostname:
        return f"{url!r} must look like rediss://host:6379"
    if parts.password is not None or parts.username is not None:
        return "the URL must not carry a user or password (secrets do not belong in settings that get logged); " \
            "use shared_tier_username and shared_tier_password_file"
    if parts.scheme == "redis" and parts.hostname not in LOOPBACK_HOSTS:
        return f"{parts.hostname} is not loopback, so the tier must be reached over TLS (rediss://)"
    if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
        return f"{parts.path!r} is not a database number"
    if parts.query or parts.fragment:
        return "the URL takes no query or fragment; the other shared_tier_* settings say the rest"
    return None


class Settings(BaseSettings):
    # No inf or NaN in any float: an infinite grace, TTL or interval would wait forever (or crash on int()).
    model_config = SettingsConfigDict(env_prefix="FORESIGHT_", extra="forbid", allow_inf_nan=False)

    dev: bool = Field(False, description="Loopback only, plain TCP, tenant 'default' without AUTH.")
    bind: str = Field("127.0.0.1", description="Address both listeners bind to.")
    resp_port: int = Field(6380, ge=0, le=65535, description="RESP (Redis protocol) port; 0 picks a free one.")
    http_port: int = Field(8443, ge=0, le=65535, description="HTTP API port; 0 picks a free one.")
    forwarded_allow_ips: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Proxies (addresses or CIDR networks) whose X-Forwarded-For and X-Forwarded-Proto the HTTP "
        "listener believes: a request one of them relays counts as the named client's, for the failed-login limiter, "
        "the audit log and /metrics' loopback check. Empty: the headers are ignored, and a request is the connecting "
        "address's (uvicorn's own default believes 127.0.0.1, so any local process could pick the address the "
        "limiter counts). Comma-separated, or a JSON list.",
    )

    tls_cert_file: Path | None = Field(None, description="PEM certificate chain for both listeners.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_client_ca_file: Path | None = Field(None, description="If set, clients must present a cert from this CA.")

    tls_vault_pki_role: str | None = Field(
        None, description="Issue the server certificate from this Vault PKI role (instead of cert files)."
    )
    tls_vault_pki_mount: str = Field("pki", description="Vault PKI mount for tls_vault_pki_role.")
    tls_common_name: str = Field("localhost", description="Server name on a Vault-issued certificate.")
    tls_alt_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra DNS names/IPs on that certificate (comma-separated, or a JSON list)."
    )
    tls_require_client_cert: bool = Field(False, description="mTLS: refuse clients without a cert from the CA.")
    tls_reload_interval_s: float = Field(1.0, gt=0, description="How often certificate files are checked.")
    tls_handshake_timeout_s: float = Field(
        10.0, gt=0, description="Time a client has to finish its TLS handshake after connecting, on either listener, "
        "before the connection is dropped; a TLS close waits as long for the client's close_notify (asyncio's own "
        "defaults: 60 s and 30 s). A connection counts from accept, handshake included: on HTTP against "
        "http_max_connections_per_source and http_max_connections; on RESP towards resp_max_clients, and up to "
        "resp_max_unauthenticated_per_source connections of one address may be in their handshake (besides those "
        "past it, not logged in). One over is closed at once."
    )
    http_request_head_timeout_s: float = Field(
        10.0, gt=0, description="Time an HTTP connection has to send a request's line and headers, from connecting or "
        "from the end of its previous response; then it is closed (408 if the request had begun). uvicorn's "
        "keep-alive timeout (5 s) closes a connection idle after a response, but not one that never sends a request "
        "or whose headers trickle in."
    )
    http_max_connections_per_source: int = Field(
        256, gt=0, description="HTTP connections one client address (IPv6: one /64) may hold open, TLS handshake "
        "included; one more is closed at once, unanswered. Proxies in forwarded_allow_ips, which carry many clients, "
        "count only towards http_max_connections."
    )
    http_max_connections: int = Field(
        4096, gt=0, description="HTTP connections open at once, at most, TLS handshake included; one more is closed "
        "at once. Each holds a file descriptor: keep it plus resp_max_clients below the open-files limit (the service "
        "raises its soft limit to the hard one at start, and warns if they do not fit)."
    )

    tenants_file: Path | None = Field(None, description="JSON file of tenants and key hashes (a key source).")
    vault_addr: str | None = Field(None, description="Vault/OpenBao address; makes Vault the key source.")
    vault_allow_insecure_http: bool = Field(
        False, description="Accept an http:// vault_addr on a host that is not loopback, although the service token "
        "and the transit data keys then cross the network in clear. For tests and labs only.",
    )
    vault_auth_method: Literal["token", "approle", "aws", "gcp", "azure", "jwt"] = Field(
        "token", description="How the service logs in to Vault: a token locally, the cloud identity on VMs."
    )
    vault_auth_mount: str | None = Field(None, description="Auth mount path; default: the method's name.")
    vault_role: str | None = Field(None, description="Vault role for aws, gcp and azure logins.")
    vault_token_file: Path | None = Field(None, description="token login: file holding the token (re-read).")
    vault_role_id: str | None = Field(None, description="approle login: the role id.")
    vault_secret_id_file: Path | None = Field(None, description="approle login: file holding the secret id.")
    vault_ca_file: Path | None = Field(None, description="CA bundle for Vault's TLS certificate.")
    vault_aws_header_value: str | None = Field(None, description="aws login: X-Vault-AWS-IAM-Server-ID, if required.")
    vault_aws_sts_region: str = Field("us-east-1", description="aws login: must match the server's sts_region.")
    vault_gcp_audience: str | None = Field(None, description="gcp login: token audience; default http://vault/<role>.")
    vault_azure_client_id: str | None = Field(None, description="azure login: user-assigned identity client id.")
    vault_jwt_source: Literal["file", "gcp", "azure"] = Field(
        "file", description="jwt login: where the identity token comes from (OpenBao on GCP/Azure VMs)."
    )
    vault_jwt_file: Path | None = Field(None, description="jwt login with jwt_source=file: the token file.")
    vault_kv_mount: str = Field("foresight", description="KV v2 mount holding tenants and key hashes.")
    vault_stale_grace_s: float = Field(
        300.0, ge=0, description="While Vault is unreachable, keys verified this recently keep working."
    )

    kms_provider: Literal["none", "vault-transit", "aws", "gcp", "azure", "local"] = Field(
        "none", description="KMS wrapping the data keys of everything written to disk."
    )
    kms_key_id: str = Field(
        "foresight",
        description="Transit key name, AWS key id/ARN/alias, GCP CryptoKey name, Azure key URL, or keyring path.",
    )
    kms_endpoint_url: str | None = Field(None, description="AWS KMS endpoint override (VPC endpoint, tests).")
    kms_previous_key_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys (as kms_key_id) that wrapped what is on disk before a move to kms_key_id (an AWS alias "
                    "pointed at a new key, another Azure key): still unwrapped. An envelope naming any other key is "
                    "refused (its header is not authenticated). Comma-separated, or a JSON list.",
    )
    data_dir: Path | None = Field(None, description="Where the encrypted snapshot and the audit log live.")
    audit_log: Path | None = Field(None, description="Audit log path; default <data_dir>/audit.log.")
    audit_rotate_mb: int = Field(
        64, ge=1, le=4096,
        description="Rotate the audit log when it reaches this many MiB; rotated files are compressed and encrypted "
        "with the KMS.",
    )
    audit_keep_files: int = Field(
        64, ge=0,
        description="Rotated audit files kept beside the live one: past this, the oldest are deleted, after an "
        "`audit.pruned` line has named them. Every login writes a line of about 360 bytes, so connection churn "
        "alone can fill a disk. 0 keeps them all. With audit_ship_url, only files already shipped are deleted.",
    )
    audit_ship_url: str | None = Field(
        None,
        description="fsspec URL (s3://bucket/prefix, gs://bucket/prefix, az://container@account.blob.core.windows.net/"
        "prefix, or a directory) where each rotated audit file "
        "is copied, as <url>/<hostname>/<name>, with the machine's cloud identity: past audit_keep_files, a file is "
        "deleted only once its copy is complete. Use a bucket with object lock or retention, so the trail outlives "
        "the machine and its own administrators.",
    )
    admin_token_hash: str | None = Field(
        None, description="Stored hash of the admin API bearer token (service.security.admin_token)."
    )
    metrics_token_file: Path | None = Field(
        None, description="File holding the bearer token that scrapes /metrics (one word, 32+ characters; read "
        "again when it changes). The admin token scrapes too. Set, it wins over vault_metrics_path. Neither: "
        "/metrics answers loopback clients only, since it names every tenant and its activity."
    )
    vault_metrics_path: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="With keys from Vault, the path inside vault_kv_mount of the secret holding the /metrics scrape "
        "token (the stacks' deployments/<stack>/metrics; `foresight metrics-token rotate` writes it). No secret "
        "there: no token, as with neither set. Ignored when metrics_token_file is set.",
    )
    vault_metrics_refresh_s: float = Field(
        30.0, gt=0, description="How often, at most, the scrape token is read again from vault_metrics_path; "
        "while Vault is unreachable the last token read stays.",
    )
    default_tenant_memory_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Memory budget of the dev tenant and of tenants without a quota."
    )
    eviction_policy: str = Field("s3fifo", description=f"Eviction policy: one of {', '.join(sorted(POLICIES))}.")
    origin: str | None = Field(
        None, description="Default origin fsspec URL; each tenant reads <origin>/<tenant>/<key> unless it has its own "
        "(dev mode's one tenant reads <origin>/<key>)."
    )
    origin_timeout_s: float = Field(5.0, gt=0, description="An origin read slower than this fails the request.")
    origin_latency_ms: float = Field(0.0, ge=0, description="Latency added to every origin read (benchmarks).")
    origin_max_concurrency: int = Field(64, gt=0, description="Concurrent origin reads per process.")
    shared_tier_url: str | None = Field(
        None,
        description="Valkey/Redis every node of a scaled-out deployment shares (rediss://host:port[/db]): reads try "
        "it before the origin, clients' writes reach the other nodes through it (docs/scale-out.md). No user or "
        "password in the URL: use shared_tier_password_file. redis:// only to a loopback address.",
    )
    shared_tier_password_file: Path | None = Field(
        None, description="File holding the shared tier's AUTH password (re-read on reconnect), if it needs one."
    )
    shared_tier_auth: Literal["password", "aws", "gcp", "azure"] = Field(
        "password",
        description="How this node proves itself to the shared tier: password (shared_tier_password_file; unset, no "
        "AUTH), or its cloud identity, no stored secret: aws (ElastiCache IAM auth: shared_tier_username is the "
        "ElastiCache user id, shared_tier_aws_cache the replication group), gcp (Memorystore for Valkey IAM auth, "
        "the service account's access token), azure (Azure Cache for Redis with Entra ID: shared_tier_username is "
        "the managed identity's object id).",
    )
    shared_tier_username: str | None = Field(None, description="ACL user for the shared tier (default: 'default').")
    shared_tier_aws_cache: str | None = Field(
        None, description="aws auth: the ElastiCache replication group id the IAM token is signed for."
    )
    shared_tier_ca_file: Path | None = Field(None, description="CA bundle for the shared tier's TLS certificate.")
    shared_tier_ttl_s: int = Field(
        3600, gt=0, description="How long a value read from the origin stays in the shared tier (bounds how stale "
        "it can get against the origin); values clients write keep their own TTL."
    )
    shared_tier_timeout_s: float = Field(
        0.25, gt=0, description="A shared tier call slower than this counts as an error and the read goes to the "
        "origin: the tier may speed reads up, never hold them."
    )
    shared_tier_channel: str = Field(
        "foresight:invalidate", min_length=1, description="Pub/sub channel that carries writes between the nodes."
    )
    active_expire_interval_s: float = Field(0.1, gt=0, description="How often expired keys are swept.")
    prefetcher: Literal["none", "stride", "markov", "learned"] = Field(
        "learned", description="Prefetcher for tenants with an origin (unless prefetch_ab_arms assigns one)."
    )
    # inf and NaN reach check_weights, whose error names the arm
    prefetch_ab_arms: Annotated[dict[str, Annotated[float, AllowInfNan()]], NoDecode] = Field(
        default_factory=dict,
        description='A/B test: prefetcher name -> weight, e.g. {"learned": 1, "markov": 1}; stable per tenant.',
    )
    prefetch_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the learned model runs.")
    prefetch_lead: int = Field(
        4, ge=0, description="Reads between a prediction and the read it aims at. A live engine issues a read's "
        "proposals a read or more after it, and the origin takes time: aimed at the very next read (0), they land "
        "late (`foresight bench live-replay` measures it)."
    )
    prefetch_tune_lead: bool = Field(
        True, description="Tune the lead of stride answers live (the tenant's stride prefetcher, or a learned engine's "
        "own stride while it serves), from prefetch_lead up or down (within 0-32) by what the cache used; the right "
        "one depends on the read rate, the origin's latency, client pipelining and the cache (docs/prefetch-live.md, "
        "'Where stride answers aim'). Markov and learned predictions keep prefetch_lead: their tables and model are "
        "learned for one distance."
    )
    prefetch_threshold: float = Field(0.25, ge=0, le=1, description="Minimum confidence worth an origin fetch.")
    prefetch_per_request: int = Field(1, ge=0, description="Prefetches issued per read at most.")
    prefetch_max_in_flight: int = Field(64, ge=1, description="Concurrent prefetch fetches per tenant at most.")
    prefetch_cpu_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of wall time all tenants' prefetch worker threads together may compute in the server "
        "process, where they hold the interpreter lock reads need; above it the access log is sampled.",
    )
    prefetch_process_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of one core each prefetch child process may compute for the tenants it serves (it does "
        "not hold the server's lock); above it the access log is sampled. Unset: a whole core where the server "
        "may use 4 or more (its CPU affinity and cgroup limit), else prefetch_cpu_share.",
    )
    prefetch_processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Child processes the tenants' prefetchers are spread over (each computes on one core and "
        "holds its own model runtime, about 360 MB with torch). Unset: one per 4 cores the server may use, at "
        "least one. Started as tenants need them.",
    )
    prefetch_max_keys: int = Field(
        DEFAULT_MAX_KEYS,
        ge=MIN_MAX_KEYS,
        description="Keys a tenant's Markov or learned prefetcher remembers (successors, last reads; the oldest "
        "half goes when full): most of its memory on a large key space. Per key, Markov 0.07 KB read once to "
        "0.15-0.33 KB recurring with several successors, the learned one 0.19 to 0.38-0.74 KB (`foresight bench "
        "prefetch-memory [--trace]`): at the default 75 / 190 MB a tenant on keys read once, up to 210 / 500 MB on "
        "the ARC traces' keys. Fewer forget keys that come back after longer (`foresight bench replay --max-keys` "
        "shows the cost). A tenant's quota may set its own (`tenants create --prefetch-max-keys`).",
    )
    prefetch_isolation: Literal["auto", "process", "thread"] = Field(
        "auto",
        description="Where prefetchers compute: child processes shared by the tenants (the request path keeps the "
        "interpreter lock), the engine's worker thread (no extra process, but it shares the lock), or auto: "
        "the learned prefetcher in the process, the simple ones (cheaper than the trip to it) in the thread.",
    )
    prefetch_checkpoint_interval_s: float = Field(
        300.0, gt=0, description="How often a learned model is checkpointed, compared and promoted or rolled back."
    )
    max_request_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest RESP request buffered for an authenticated client."
    )
    max_request_args: int = Field(
        1024 * 1024, ge=1, le=2**31 - 1, description="Most arguments in one RESP request (Redis allows 2^31 - 1). "
        "A larger count is refused when its header arrives ('ERR Protocol error: invalid multibulk length'), before "
        "anything is allocated for it: hiredis makes a list as long as the count announced, and freeing it holds the "
        "event loop (3 billion: 10-16 s)."
    )
    resp_max_clients: int = Field(
        10_000, ge=1, description="RESP connections open at once, at most; one more is answered 'ERR max number of "
        "clients reached' and closed, as Redis does. Each holds a file descriptor: keep it below the open-files limit "
        "(the service raises its soft limit to the hard one at start)."
    )
    resp_max_unauthenticated_per_source: int = Field(
        1024, ge=1, description="RESP connections one client address (IPv6: one /64) may hold before they log in; "
        "one more is refused as over resp_max_clients. One address cannot take every connection slot without a key, "
        "while a pool reconnecting at once through one NAT address (a restart) still gets in."
    )
    resp_max_clients_per_tenant: int = Field(
        1000, gt=0, description="RESP connections one tenant may hold logged in: a login past it is refused (the "
        "connection stays, not logged in), so one tenant cannot take every connection slot (resp_max_clients) "
        "from the others.",
    )
    resp_auth_timeout_s: float = Field(
        10.0, gt=0, description="A RESP connection that has not logged in (AUTH or HELLO AUTH) this long after it "
        "connected is closed. Dev mode needs no login and has no deadline."
    )
    scripting: bool = Field(
        True, description="Whether tenants may run Lua scripts (EVAL, EVALSHA, SCRIPT). A script holds the event "
        "loop while it runs, as in Redis, so every tenant waits for it: the limits below bound that."
    )
    script_time_limit_ms: int = Field(
        500, gt=0, le=60_000, description="A script running longer than this is stopped with an error and its "
        "writes are undone (Redis would only start answering BUSY, and cannot kill a script that wrote)."
    )
    script_budget_ms_per_s: int = Field(
        100, ge=0, le=1000, description="Event-loop time one tenant's scripts may take, on average, per second "
        "(service/resp/script_budget.py): each run and compile is charged what it took, and while the tenant's budget "
        "is spent its EVAL, EVALSHA and SCRIPT LOAD get -BUSY with when to retry. 0: no budget (one tenant alone; "
        "the script benchmarks)."
    )
    script_budget_burst_ms: int = Field(
        500, gt=0, le=60_000, description="Script time a tenant quiet for a while may spend at once before it is "
        "paced to script_budget_ms_per_s (default: one script to the default time limit)."
    )
    script_memory_bytes: int = Field(
        32 * 1024 * 1024, ge=1024 * 1024, description="Memory one tenant's Lua runtime may allocate (its compiled "
        "scripts and their values); past it a script fails with an out-of-memory error."
    )
    auth_cache_ttl_s: float = Field(1.0, ge=0, description="How long a verified key is trusted before rechecking.")
    auth_failure_burst: int = Field(
        20, ge=1, description="Failed logins (HTTP keys, RESP AUTH and HELLO) a client address may make in a row; "
        "after them its logins are refused (HTTP 429, a RESP error) without asking the key source, except with "
        "keys verified in the last auth_cache_ttl_s. IPv6 clients count per /64."
    )
    auth_failure_rate: float = Field(
        2.0, gt=0, description="Failed logins per second a client address earns back after the burst."
    )
    auth_max_concurrent_lookups: int = Field(
        16, ge=1, description="Logins the key source (Vault) is asked to verify at once; one that waits 2 s for "
        "a turn is refused (HTTP 503, a RESP error) and may be retried."
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="Time in-flight requests get to finish on shutdown.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("tls_alt_names", "kms_previous_key_ids", "forwarded_allow_ips", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """A list from a file, or from a variable as a JSON list or the natural comma-separated `a.example,10.0.0.7`."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text.startswith("["):
            return [name.strip() for name in text.split(",") if name.strip()]
        try:
            return json.loads(text)
        except ValueError as err:
            raise ValueError(f"not a JSON list ({err}); or give the names comma-separated") from None

    @field_validator("origin")
    @classmethod
    def _check_origin(cls, value: str | None) -> str | None:
        """The tenants' rule (service/origin/urls.py), at start: a bad default would leave every tenant without one."""
        if value is not None:
            check_origin_url(value)  # its ValueError names the form to use
        return value

    @field_validator("prefetch_ab_arms", mode="before")
    @classmethod
    def _arms(cls, value: Any) -> Any:
        """A mapping from a file, or JSON from a variable."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError('must be a JSON object of prefetcher weights, e.g. {"learned": 1, "stride": 1}') from None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.eviction_policy not in POLICIES:
            raise ValueError(
                f"eviction_policy {self.eviction_policy!r} is unknown; choose one of {', '.join(sorted(POLICIES))}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_vault_pki_role is not None:
            if self.tls_cert_file is not None:
                raise ValueError("choose one certificate source: tls_cert_file or tls_vault_pki_role")
            if self.vault_addr is None or self.data_dir is None:
                raise ValueError("tls_vault_pki_role needs vault_addr and data_dir (where the certificate is kept)")
        if self.tls_require_client_cert and self.tls_client_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_client_ca_file")
        if self.tenants_file is not None and self.vault_addr is not None:
            raise ValueError("choose one key source: tenants_file or vault_addr, not both")
        if self.kms_provider == "vault-transit" and self.vault_addr is None:
            raise ValueError("kms_provider vault-transit needs vault_addr")
        if self.vault_addr is not None:
            vault = urlsplit(self.vault_addr)
            if vault.scheme not in ("http", "https") or not vault.hostname:
                raise ValueError(f"vault_addr (FORESIGHT_VAULT_ADDR) {self.vault_addr!r} must look like "
                                 "https://vault.example.com:8200")
            if (vault.scheme == "http" and vault.hostname not in LOOPBACK_HOSTS
                    and not self.vault_allow_insecure_http):
                raise ValueError(f"vault_addr (FORESIGHT_VAULT_ADDR): {vault.hostname} is not loopback, so Vault must "
                                 "be reached over https://; over http:// the service token and the transit data keys "
                                 "would cross the network in clear (FORESIGHT_VAULT_ALLOW_INSECURE_HTTP=true allows "
                                 "it, for tests and labs only)")
        unknown_arms = set(self.prefetch_ab_arms) - {"none", "stride", "markov", "learned"}
        if unknown_arms:
            raise ValueError(f"prefetch_ab_arms names unknown prefetchers: {', '.join(sorted(unknown_arms))}")
        if self.prefetch_ab_arms:
            check_weights(self.prefetch_ab_arms)  # NaN, inf, negative or all-zero weights cannot split tenants
        if self.shared_tier_url is not None:
            problem = shared_tier_url_problem(self.shared_tier_url)
            if problem:
                raise ValueError(f"shared_tier_url: {problem}")
        elif self.shared_tier_password_file is not None:
            raise ValueError("shared_tier_password_file needs shared_tier_url")
        if self.shared_tier_auth != "password" and self.shared_tier_password_file is not None:
            raise ValueError(f"shared_tier_auth {self.shared_tier_auth} uses the cloud identity: unset "
                             "shared_tier_password_file")
        if self.shared_tier_auth in ("aws", "azure") and not self.shared_tier_username:
            raise ValueError(f"shared_tier_auth {self.shared_tier_auth} needs shared_tier_username")
        if self.shared_tier_auth == "aws" and not self.shared_tier_aws_cache:
            raise ValueError("shared_tier_auth aws needs shared_tier_aws_cache (the replication group id)")
        if self.resp_port == self.http_port != 0:
            raise ValueError(f"resp_port and http_port are both {self.resp_port}: each listener needs its own port")
        if self.dev and self.bind not in LOOPBACK_HOSTS:
            raise ValueError(f"dev mode binds loopback only; bind={self.bind!r} is not allowed with dev")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None or self.tls_vault_pki_role is not None

    def production_problems(self) -> list[str]:
        """What stops this configuration from serving outside dev mode."""
        problems = []
        if not self.tls_enabled:
            problems.append(
                "TLS is not configured: set FORESIGHT_TLS_CERT_FILE and FORESIGHT_TLS_KEY_FILE "
                "(or FORESIGHT_TLS_VAULT_PKI_ROLE)"
            )
        if self.tenants_file is None and self.vault_addr is None:
            problems.append(
                "no key source: set FORESIGHT_VAULT_ADDR or FORESIGHT_TENANTS_FILE (or use --dev for a local trial)"
            )
        return problems

    @property
    def audit_path(self) -> Path | None:
        if self.audit_log is not None:
            return self.audit_log
        return self.data_dir / "audit.log" if self.data_dir is not None else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings with precedence: explicit overrides (CLI flags) > FORESIGHT_* environment > file > defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values = {k: v for k, v in _read_file(config_file).items() if f"FORESIGHT_{k.upper()}" not in os.environ}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except SettingsError as err:  # a variable pydantic-settings could not decode; the message names its field
        raise ConfigError(f"invalid configuration: {err} (lists and mappings take JSON)") from None
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc, message = problem["loc"], problem["msg"].removeprefix("Value error, ")
            if loc:
                name = ".".join(str(p) for p in loc)
                lines.append(f"{name} (FORESIGHT_{str(loc[0]).upper()}): {message}")
            else:
                lines.append(f"{_variables_named(message)}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _variables_named(message: str) -> str:
    """The variables of the settings a whole-model check's message names, for the user to find what to change."""
    if "FORESIGHT_" in message:
        return "settings"  # the message names them itself
    named = [name for name in Settings.model_fields if re.search(rf"\b{name}\b", message)]
    return ", ".join(f"FORESIGHT_{name.upper()}" for name in named) or "settings"


def _read_file(config_file: Path) -> dict[str, Any]:
    """The settings a TOML or JSON file holds; ConfigError saying what is wrong with the file otherwise."""
    if config_file.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file {config_file}: YAML is not supported; use .toml or .json")
    try:
        text = config_file.read_text(encoding="utf-8")
        values = json.loads(text) if config_file.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {config_file} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {config_file} is a directory") from None
    except OSError as err:
        raise ConfigError(f"config file {config_file} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {config_file} is not UTF-8 text") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {config_file} cannot be parsed: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {config_file} must hold a table (JSON: an object) of settings, "
                          f"not a {type(values).__name__}")
    return values
