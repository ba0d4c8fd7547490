"""`tenants create --origin` takes the origins the service reads, and nothing else: exit 2 before Vault is touched.

The rule is the service's own (service.origin.urls; tests/origin/test_origin_urls.py has the cases).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onboarding.errors import EXIT_USAGE
from tests.onboarding.conftest import invoke


@pytest.mark.parametrize(
    ("origin", "why"),
    [
        ("ftp://10.255.255.1/x", "protocol 'ftp' is not an origin Foresight reads; use an absolute directory"),
        ("file://relative/dir", "file:// takes an absolute path"),
        ("s3://", "s3:// names no bucket"),
        ("memory://", "protocol 'memory' is not an origin"),
        ("zip://x.zip", "protocol 'zip' is not an origin"),
        ("github://org:repo@main/", "protocol 'github' is not an origin"),
    ],
)
def test_an_origin_the_service_does_not_read_is_exit_2_before_vault(state_dir: Path, origin: str, why: str) -> None:
    result = invoke("tenants", "create", "acme", "--origin", origin)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.startswith(f"error: --origin {origin}: ") and why in result.stderr
