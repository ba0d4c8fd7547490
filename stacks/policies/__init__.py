"""The Foresight policy pack: `rules.py` holds the policies, `__main__.py` is the PolicyPack entry point.

Run it with a deployment: `pulumi preview --policy-pack stacks/policies` (or `pulumi up --policy-pack ...`).
"""
