"""What the Azure Marketplace SaaS integration needs to know: the publisher's Entra app (the one named in the
offer's technical configuration), the offer, and how its plans map onto Foresight's. From FORESIGHT_AZURE_MP_*;
the app's credential comes from azure-identity's own variables (AZURE_CLIENT_SECRET or
AZURE_CLIENT_CERTIFICATE_PATH), never from a Foresight setting."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from onboarding.plans import PlanMap, same_plans


class AzureMarketplaceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORESIGHT_AZURE_MP_", extra="forbid")

    tenant_id: str = Field(min_length=1, description="The publisher's Entra tenant (the app's home).")
    client_id: str = Field(min_length=1, description="The Entra app id in the offer's technical configuration.")
    offer_id: str = Field(min_length=1, description="The SaaS offer; purchases of any other offer are refused.")
    plans: PlanMap = Field(
        default_factory=same_plans,
        description="Offer plan id -> Foresight plan.",
    )
    usage_dimension: str = Field("requests", min_length=1, description="The metered billing dimension's id.")
    requests_per_unit: int = Field(
        1000, gt=0, description="Reads in one unit of usage_dimension; the remainder carries to the next hour."
    )
    api_url: str = Field("https://marketplaceapi.microsoft.com", description="SaaS fulfillment and metering API.")
    authority: str = Field("https://login.microsoftonline.com", description="Entra ID, for tokens and signing keys.")
    ca_file: Path | None = Field(None, description="CA bundle for both (a TLS-inspecting proxy, tests).")
