"""AWS Marketplace: the AMI-with-CloudFormation launch template (`template.py`), its first boot
(`first_boot.py`, run by `marketplace/first_boot.sh`), and the SaaS fulfilment.

Imports nothing: `first_boot.py` runs inside the service image, which has no Pulumi SDK, and `template.py`
imports `stacks.aws` (and with it pulumi_aws) only when the template is rendered.
"""
