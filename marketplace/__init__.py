"""Marketplace launch artifacts and fulfilment, per cloud (`aws/`, and later `gcp/`, `azure/`), generated from the
same spec as `stacks/` so a listing never launches something the stacks do not."""
