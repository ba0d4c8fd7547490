"""Google Cloud Marketplace: the Terraform VM-solution module (`template.py`: main.tf, variables.tf, outputs.tf,
versions.tf, the user-data template; `blueprint.py`: metadata.yaml, metadata.display.yaml and the test tfvars),
its first boot (`first_boot.py`, run by `marketplace/first_boot.sh`), and the SaaS fulfilment.

Imports nothing: `first_boot.py` runs inside the service image, which has no Pulumi SDK, and `template.py`
imports `stacks.gcp` (and with it pulumi_gcp) only when the module is rendered.
"""
