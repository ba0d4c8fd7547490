"""Foresight's Pulumi program: one GPU node per stack, on AWS, Google Cloud or Azure, behind one shared spec.

`stacks.spec` holds what every cloud shares (the validated inputs, the outputs, the ports); each cloud lives
in its own package (`stacks.aws`, `stacks.gcp`, `stacks.azure`) with the same file names, and
`stacks.program` imports only the one that `foresight:cloud` names, so a stack never loads another cloud's
SDK.
"""
