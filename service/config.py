"""Service configuration: one pydantic-settings model, read from FORESIGHT_* variables and an optional file.

Production refuses to start without TLS and a key source; `dev` mode binds loopback only and serves one
tenant without AUTH, like Redis's protected mode.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.store.policies import POLICIES


class ConfigError(ValueError):
    """Configuration that cannot run; the message names the setting (and its variable) to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORESIGHT_", extra="forbid")

    dev: bool = Field(False, description="Loopback only, plain TCP, tenant 'default' without AUTH.")
    bind: str = Field("127.0.0.1", description="Address both listeners bind to.")
    resp_port: int = Field(6380, ge=0, le=65535, description="RESP (Redis protocol) port; 0 picks a free one.")
    http_port: int = Field(8443, ge=0, le=65535, description="HTTP API port; 0 picks a free one.")

    tls_cert_file: Path | None = Field(None, description="PEM certificate chain for both listeners.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_client_ca_file: Path | None = Field(None, description="If set, clients must present a cert from this CA.")

    tenants_file: Path | None = Field(None, description="JSON file of tenants and key hashes (a key source).")
    default_tenant_memory_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Memory budget of the dev tenant and of tenants without a quota."
    )
    eviction_policy: str = Field("s3fifo", description=f"Eviction policy: one of {', '.join(sorted(POLICIES))}.")
    origin: str | None = Field(
        None, description="Default origin fsspec URL; each tenant reads <origin>/<tenant>/<key> unless it has its own."
    )
    origin_timeout_s: float = Field(5.0, gt=0, description="An origin read slower than this fails the request.")
    origin_latency_ms: float = Field(0.0, ge=0, description="Latency added to every origin read (benchmarks).")
    origin_max_concurrency: int = Field(64, gt=0, description="Concurrent origin reads per process.")
    active_expire_interval_s: float = Field(0.1, gt=0, description="How often expired keys are swept.")
    auth_cache_ttl_s: float = Field(1.0, ge=0, description="How long a verified key is trusted before rechecking.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="Time in-flight requests get to finish on shutdown.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.eviction_policy not in POLICIES:
            raise ValueError(
                f"eviction_policy {self.eviction_policy!r} is unknown; choose one of {', '.join(sorted(POLICIES))}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.dev and self.bind not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"dev mode binds loopback only; bind={self.bind!r} is not allowed with dev")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    def production_problems(self) -> list[str]:
        """What stops this configuration from serving outside dev mode."""
        problems = []
        if not self.tls_enabled:
            problems.append("TLS is not configured: set FORESIGHT_TLS_CERT_FILE and FORESIGHT_TLS_KEY_FILE")
        if self.tenants_file is None:
            problems.append("no key source: set FORESIGHT_TENANTS_FILE (or use --dev for a local trial)")
        return problems


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings with precedence: explicit overrides (CLI flags) > FORESIGHT_* environment > file > defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = config_file.read_text()
            values = json.loads(text) if config_file.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"config file {config_file} cannot be parsed: {err}") from None
        values = {k: v for k, v in values.items() if f"FORESIGHT_{k.upper()}" not in os.environ}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            name = ".".join(str(p) for p in problem["loc"])
            where = f"{name} (FORESIGHT_{name.upper()})" if name else "settings"
            lines.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
