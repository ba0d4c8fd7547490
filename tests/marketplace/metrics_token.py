"""What every cloud's first boot must leave of the metrics scrape token: the secret's `metrics_token`, in a
metrics.token that only its owner reads and that the service's own ScrapeToken accepts, and nowhere in first
boot's output."""

from __future__ import annotations

import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marketplace.first_boot import METRICS_TOKEN_FILE
from service.http.scrape_token import ScrapeToken


def assert_scrape_token_minted(conf: Path, document: Mapping[str, Any], output: str) -> str:
    """The secret's token: 256 bits as hex, in conf/metrics.token (0600, owned as tls.key), accepted by the
    service's ScrapeToken on that file where another token is not, and not in `output` (first boot's)."""
    token = document["metrics_token"]
    assert isinstance(token, str) and re.fullmatch(r"[0-9a-f]{64}", token), "metrics_token is not 64 hex digits"
    path = conf / METRICS_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == (conf / "tls.key").stat().st_uid
    assert path.read_text() == token
    scrape = ScrapeToken.from_file(path)
    assert scrape.verify(token)
    assert not scrape.verify(secrets.token_hex(32)) and not scrape.verify(document["api_key"])
    assert token not in output
    return token
