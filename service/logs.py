"""Structured JSON logs on stderr: one object a line, ready for any log pipeline."""

from __future__ import annotations

import json
import logging
import sys
import time

# Libraries that sign requests or handle cloud credentials log them at DEBUG: botocore's SigV4 lines hold the
# canonical request (an ElastiCache IAM password is a presigned URL, a Vault aws login carries the STS session
# token) and the signature, enough to rebuild the credential. They stay at WARNING whatever the service's level.
CREDENTIAL_LOGGERS = (
    "botocore", "boto3", "s3transfer", "aiobotocore", "google.auth", "azure.identity", "azure.core", "msal",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info") -> None:
    """JSON lines on stderr at `level`; the credential-handling libraries never below WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    pinned = max(root.level, logging.WARNING)  # at "error" they follow the root: a logger's level decides alone
    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(pinned)
