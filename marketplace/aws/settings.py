"""What the AWS Marketplace SaaS integration needs to know: the listing's product code, where its lifecycle
events arrive, and how the listing's dimensions map onto Foresight's plans. Read from FORESIGHT_AWS_MP_*."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from onboarding.plans import PlanMap, same_plans


class AwsMarketplaceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORESIGHT_AWS_MP_", extra="forbid")

    product_code: str = Field(
        min_length=1, description="The listing's product code; events and tokens for any other product are refused."
    )
    region: str = Field("us-east-1", description="AWS Marketplace's metering and entitlement APIs live in us-east-1.")
    queue_url: str | None = Field(
        None, description="SQS queue an EventBridge rule (aws/eventbridge-pattern.json) sends the listing's "
                          "Marketplace events to; the consumer takes EventBridge events only."
    )
    plan_dimensions: PlanMap = Field(
        default_factory=same_plans,
        description="Contract dimension -> Foresight plan. The buyer's highest entitled plan wins.",
    )
    usage_dimension: str = Field(
        "requests", min_length=1, description="The metered (pay-as-you-go) dimension BatchMeterUsage reports."
    )
    requests_per_unit: int = Field(
        1000, gt=0, description="Requests in one unit of usage_dimension; the remainder carries to the next hour."
    )
    metering_endpoint_url: str | None = Field(None, description="Metering API endpoint override (tests, VPC endpoint).")
    entitlement_endpoint_url: str | None = Field(None, description="Entitlement API endpoint override.")
    sqs_endpoint_url: str | None = Field(None, description="SQS endpoint override.")

    @model_validator(mode="after")
    def _usage_is_not_a_plan(self) -> AwsMarketplaceSettings:
        if self.usage_dimension in self.plan_dimensions:
            raise ValueError(f"usage_dimension {self.usage_dimension!r} is also a plan dimension")
        return self
