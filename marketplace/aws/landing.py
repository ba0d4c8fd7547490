"""The registration page AWS Marketplace sends a buyer to: a form POST carrying `x-amzn-marketplace-token`."""

from __future__ import annotations

from fastapi import FastAPI

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.registration import form_page

TOKEN_FIELD = "x-amzn-marketplace-token"  # noqa: S105 - the form field's name, not a secret


def create_app(marketplace: AwsMarketplace) -> FastAPI:
    return form_page("Foresight: AWS Marketplace registration", "/aws/register", TOKEN_FIELD, marketplace.register)
