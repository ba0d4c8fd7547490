"""The connection snippet holds the API key once, in its export line: redis-cli, redis-py and curl read it from the
environment, so it is never on a command line (`ps` shows those to every user) nor in the history again."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from onboarding.context import Endpoints
from onboarding.snippet import connection_snippet
from service.security.apikeys import new_key


def test_the_key_is_in_the_export_line_only() -> None:
    key = new_key().secret
    snippet = connection_snippet(Endpoints("127.0.0.1", 6390, "https://127.0.0.1:8443", Path("/s/ca.crt")), key)
    assert [client for client, text in snippet.items() if key in text] == ["env"]
    assert snippet["env"] == f"export FORESIGHT_API_KEY={key}"
    assert "$FORESIGHT_API_KEY" in snippet["redis-cli"] and "$FORESIGHT_API_KEY" in snippet["curl"]
    assert "os.environ['FORESIGHT_API_KEY']" in snippet["redis-py"]


class _EchoAuthorization(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.headers.get("Authorization") or "none").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuthorization)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash")
def test_the_curl_line_sends_the_key_from_the_environment(echo_url: str) -> None:
    key = new_key().secret
    snippet = connection_snippet(Endpoints("127.0.0.1", 6390, echo_url, None), key)
    script = f"{snippet['env']}\n{snippet['curl'].replace('curl', 'curl -s', 1)}"
    answer = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20, check=True)
    assert answer.stdout == f"Bearer {key}"
