"""Entry point of `pulumi up` (Pulumi.yaml: `main: stacks/`)."""

import sys
from pathlib import Path

# Pulumi runs this directory as a script, which puts stacks/ (not the project root) on sys.path.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks.program import main

main()
