"""Plans: named quota presets for `tenants create --plan`, and custom quotas from flags."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

from onboarding.errors import InvalidInput
from service.prefetch import PREFETCHERS
from service.prefetch.markov import MIN_MAX_KEYS
from service.tenancy import MAX_MEMORY_BYTES, TenantQuota

MIB = 1024 * 1024

PLANS: dict[str, TenantQuota] = {
    "starter": TenantQuota(memory_bytes=64 * MIB, requests_per_second=500),
    "pro": TenantQuota(memory_bytes=1024 * MIB, requests_per_second=5_000),
    "enterprise": TenantQuota(memory_bytes=8192 * MIB, requests_per_second=0),  # 0: no rate limit
}
CUSTOM = "custom"


def quota_for(
    plan: str, *, memory_mib: int | None = None, rps: float | None = None, origin: str | None = None,
    prefetcher: str | None = None, prefetch_max_keys: int | None = None, scripting: bool = True,
) -> TenantQuota:
    """The quota of `plan`, with `memory_mib`/`rps` overriding it (required for the custom plan)."""
    if plan == CUSTOM:
        if memory_mib is None or rps is None:
            raise InvalidInput("plan custom", "needs both --memory (MiB) and --rps (0 for unlimited)")
        base = TenantQuota()
    elif plan in PLANS:
        base = PLANS[plan]
    else:
        choices = ", ".join([*PLANS, CUSTOM])
        raise InvalidInput(f"plan {plan!r}", f"unknown plan; choose one of {choices}")
    if memory_mib is not None and not 0 < memory_mib <= MAX_MEMORY_BYTES // MIB:
        raise InvalidInput("--memory", f"must be a positive number of MiB, at most {MAX_MEMORY_BYTES // MIB:,} (8 PiB)")
    if rps is not None and not (math.isfinite(rps) and rps >= 0):
        raise InvalidInput("--rps", "must be a finite number, 0 (unlimited) or more")
    if prefetcher is not None and prefetcher not in PREFETCHERS:
        raise InvalidInput("--prefetcher", f"unknown prefetcher {prefetcher!r}; choose one of {', '.join(PREFETCHERS)}")
    if prefetch_max_keys is not None and prefetch_max_keys < MIN_MAX_KEYS:
        raise InvalidInput("--prefetch-max-keys", f"must be at least {MIN_MAX_KEYS} (or unset: the service's bound)")
    if origin is not None:
        check_origin(origin)
    return TenantQuota(
        memory_bytes=memory_mib * MIB if memory_mib is not None else base.memory_bytes,
        requests_per_second=rps if rps is not None else base.requests_per_second,
        origin=origin,
        prefetcher=prefetcher,
        prefetch_max_keys=prefetch_max_keys,
        scripting=scripting,
    )


def check_origin(url: str) -> None:
    """InvalidInput unless the service reads `url` as an origin: an absolute directory, file:///..., or s3://, gs://
    or az:// naming a bucket (container). The service applies the same rule (service.origin.urls) to the tenants
    it loads."""
    from service.origin.urls import BadOriginUrl, check_origin_url  # the origin package loads fsspec: only here

    try:
        check_origin_url(url)
    except BadOriginUrl as err:
        raise InvalidInput(f"--origin {url}", str(err)) from None


def plans_help() -> str:
    """The plans and their quotas, for --help: `starter (64 MiB, 500/s)`, ..."""
    listed = [f"{name} ({quota.memory_bytes // MIB:,} MiB, "
              f"{f'{quota.requests_per_second:,.0f}/s' if quota.requests_per_second else 'no rate limit'})"
              for name, quota in PLANS.items()]
    return f"{', '.join(listed)}, or {CUSTOM} (needs --memory and --rps)"


def plan_of(quota: TenantQuota) -> str:
    """The plan whose quota this is, or "custom"."""
    for name, preset in PLANS.items():
        if (preset.memory_bytes, preset.requests_per_second) == (quota.memory_bytes, quota.requests_per_second):
            return name
    return CUSTOM


def check_plan_map(mapping: dict[str, str]) -> dict[str, str]:
    """A marketplace's plan (or dimension) -> Foresight plan map, refused with the plans to choose from when it
    names one that does not exist or maps nothing."""
    unknown = sorted(set(mapping.values()) - set(PLANS))
    if unknown:
        raise ValueError(f"unknown plan(s) {', '.join(unknown)}; plans are {', '.join(PLANS)}")
    if not mapping:
        raise ValueError("map at least one marketplace plan to a Foresight plan")
    return mapping


def same_plans() -> dict[str, str]:
    """The default plan map: each Foresight plan sold under its own name."""
    return {plan: plan for plan in PLANS}


def _json_object(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# A marketplace setting mapping its plans onto Foresight's. The field decodes its JSON itself (NoDecode stops
# pydantic-settings from doing it) so that a value that is not JSON fails validation naming the field.
PlanMap = Annotated[dict[str, str], NoDecode, BeforeValidator(_json_object), AfterValidator(check_plan_map)]
