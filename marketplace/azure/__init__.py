"""Azure Marketplace: the managed application (`template.py`: mainTemplate.json and createUiDefinition.json), its
first boot (`first_boot.py`, run by `marketplace/first_boot.sh`), and the SaaS fulfilment.

Imports nothing: `first_boot.py` runs inside the service image, which has no Pulumi SDK, and `template.py`
imports `stacks.azure` (and with it pulumi_azure_native) only when the application is rendered.
"""
