"""What the Google Cloud Marketplace SaaS integration needs to know: the provider id, the Pub/Sub subscription
the Procurement events arrive on, the Service Control service that meters usage, and how the listing's plans
map onto Foresight's. From FORESIGHT_GCP_MP_*; the provider's service account comes from the standard
GOOGLE_APPLICATION_CREDENTIALS (or the host's own identity), never from a Foresight setting."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from onboarding.plans import PlanMap, same_plans


class GcpMarketplaceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORESIGHT_GCP_MP_", extra="forbid")

    provider_id: str = Field(min_length=1, description="The partner's provider id in the Procurement API.")
    signup_audience: str = Field(
        min_length=1, description="The `aud` of the sign-up JWT: the domain of the listing's sign-up URL."
    )
    product: str | None = Field(
        None, description="The listing's product (its productExternalName in Procurement); sign-up sets up only "
                          "this product's orders. Required by serve and register.",
    )
    subscription: str | None = Field(
        None, description="projects/<p>/subscriptions/<s>, subscribed to the partner's Procurement topic."
    )
    service_name: str = Field(
        min_length=1, description="The listing's Service Control service, e.g. foresight.endpoints.<p>.cloud.goog."
    )
    plans: PlanMap = Field(default_factory=same_plans, description="Listing plan id -> Foresight plan.")
    usage_metric: str = Field("requests", min_length=1, description="The metric (under service_name) metered.")
    requests_per_unit: int = Field(
        1000, gt=0, description="Reads in one unit of usage_metric; the remainder carries to the next hour."
    )
    procurement_url: str = Field("https://cloudcommerceprocurement.googleapis.com", description="Procurement API.")
    pubsub_url: str = Field("https://pubsub.googleapis.com", description="Pub/Sub API.")
    servicecontrol_url: str = Field("https://servicecontrol.googleapis.com", description="Service Control API.")
    certs_url: str = Field(
        "https://www.googleapis.com/robot/v1/metadata/x509/cloud-commerce-partner@system.gserviceaccount.com",
        description="Where the sign-up JWT's signing certificates are published (also its issuer).",
    )
    ca_file: Path | None = Field(None, description="CA bundle for all of them (a TLS-inspecting proxy, tests).")
