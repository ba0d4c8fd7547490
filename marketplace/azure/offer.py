"""What the Azure listing offers, shared by its ARM template and its portal form: the VM image the managed
application runs, the GPU sizes a buyer may pick, and the offer's usage-attribution GUID."""

from __future__ import annotations

from stacks.spec import DEFAULT_INSTANCE_TYPES, Cloud

# Customer usage attribution: register this GUID as the offer's tracking GUID in Partner Center.
USAGE_ATTRIBUTION_ID = "e0cd57d8-ccbc-4964-bea4-0b58c57ff2f6"
# The VM offer that images/packer/azure publishes (Partner Center ids); managed apps must name its plan.
IMAGE = {"publisher": "foresight", "offer": "foresight-gpu-cache", "sku": "foresight-ubuntu-2204"}
# Every size of the stack's GPU_SERIES that its check_instance_types accepts (the test holds them to that).
VM_SIZES = (
    DEFAULT_INSTANCE_TYPES[Cloud.AZURE],
    "Standard_NC8as_T4_v3",
    "Standard_NC16as_T4_v3",
    "Standard_NC64as_T4_v3",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_NC40ads_H100_v5",
)
