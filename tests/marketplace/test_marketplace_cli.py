"""`foresight marketplace aws ...` as an operator or a cron job runs it: configuration from the environment,
one JSON object with --json, one error line and the documented exit code otherwise."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from marketplace import cli
from marketplace.aws.settings import AwsMarketplaceSettings
from marketplace.azure.settings import AzureMarketplaceSettings
from marketplace.gcp.settings import GcpMarketplaceSettings
from service.net import free_port
from tests import servers
from tests.marketplace.aws_fake import MarketplaceFake
from tests.marketplace.azure_fake import AzureFake
from tests.marketplace.conftest import MOUNT, PRODUCT, UNIT, Deployment
from tests.marketplace.gcp_fake import GcpFake
from tests.marketplace.test_aws_events import Bus, license_event
from tests.servers import OpenBao


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, tmp_path, deployment: Deployment, openbao: OpenBao,  # type: ignore[no-untyped-def]
    settings: AwsMarketplaceSettings,
) -> None:
    """The deployment and listing through the variables the commands document; no local state."""
    monkeypatch.setenv("FORESIGHT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", openbao.token)
    monkeypatch.setenv("FORESIGHT_ADMIN_URL", deployment.admin_url)
    monkeypatch.setenv("FORESIGHT_ADMIN_TOKEN", deployment.admin_token)
    monkeypatch.setenv("FORESIGHT_ADMIN_CA", str(deployment.pki.ca_cert))
    monkeypatch.setenv("FORESIGHT_AUDIT_LOG", str(tmp_path / "audit.log"))
    monkeypatch.setenv("FORESIGHT_AWS_MP_PRODUCT_CODE", PRODUCT)
    monkeypatch.setenv("FORESIGHT_AWS_MP_METERING_ENDPOINT_URL", str(settings.metering_endpoint_url))
    monkeypatch.setenv("FORESIGHT_AWS_MP_ENTITLEMENT_ENDPOINT_URL", str(settings.entitlement_endpoint_url))
    monkeypatch.setenv("FORESIGHT_AWS_MP_SQS_ENDPOINT_URL", str(settings.sqs_endpoint_url))
    monkeypatch.setenv("FORESIGHT_AWS_MP_REQUESTS_PER_UNIT", str(UNIT))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("FORESIGHT_VAULT_KV_MOUNT", MOUNT)


REQUIRED = {  # what docs/marketplace-<cloud>.md marks required, the credential azure-identity reads included
    "aws": ["FORESIGHT_AWS_MP_PRODUCT_CODE"],
    "gcp": ["FORESIGHT_GCP_MP_PROVIDER_ID", "FORESIGHT_GCP_MP_SIGNUP_AUDIENCE", "FORESIGHT_GCP_MP_SERVICE_NAME"],
    "azure": ["FORESIGHT_AZURE_MP_TENANT_ID", "FORESIGHT_AZURE_MP_CLIENT_ID", "FORESIGHT_AZURE_MP_OFFER_ID",
              "AZURE_CLIENT_SECRET"],
}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args))


FORESIGHT = [sys.executable, "-c", "from service.cli import main; main()"]


class Started:
    """`foresight marketplace ARGS` as its own process. Its lines are read as they are printed, so a test sees
    what a person or a log collector sees while the command runs, not only once it has exited."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*FORESIGHT, "marketplace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                        for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for reader in self.readers:
            reader.start()
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def _read(self, stream: Any, name: str) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def line(self, stream: str, timeout: float = 60) -> str:
        """The next line on `stream`; a failure quoting everything printed so far if none comes in time."""
        try:
            while True:
                name, line = self.lines.get(timeout=timeout)
                self.seen[name].append(line)
                if name == stream:
                    return line
        except queue.Empty:
            pytest.fail(f"nothing more on {stream} within {timeout}s; printed so far: {self.seen}")

    def finish(self, timeout: float = 60) -> tuple[int, list[str], list[str]]:
        """Exit code, and the stdout and stderr lines not yet read by `line`."""
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        rest: dict[str, list[str]] = {"stdout": [], "stderr": []}
        while not self.lines.empty():
            name, line = self.lines.get_nowait()
            rest[name].append(line)
        return code, rest["stdout"], rest["stderr"]

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def clean_cloud_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No marketplace setting or cloud credential from the environment the tests run in."""
    for name in list(os.environ):
        if name.startswith(("FORESIGHT_AWS_MP_", "FORESIGHT_GCP_MP_", "FORESIGHT_AZURE_MP_", "AZURE_CLIENT_")):
            monkeypatch.delenv(name)


def test_register_prints_the_tenant_and_its_key_once_as_json(env: None, fake: MarketplaceFake,
                                                              deployment: Deployment) -> None:
    token, license_arn = fake.purchase("111122223333", "pro")
    first = run("aws", "register", token, "--json")
    assert first.exit_code == 0, first.output
    body = json.loads(first.stdout)
    assert body["plan"] == "pro" and body["license_arn"] == license_arn
    assert deployment.redis(body["api_key"]).ping()
    assert "redis-cli" in body["snippet"]


def test_the_token_can_come_from_stdin_so_it_is_not_on_the_command_line(env: None, fake: MarketplaceFake,
                                                                         deployment: Deployment) -> None:
    token, license_arn = fake.purchase("111122223333", "pro")
    piped = CliRunner().invoke(cli.app, ["aws", "register", "--json", "-"], input=token + "\n")
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["license_arn"] == license_arn
    empty = CliRunner().invoke(cli.app, ["aws", "register", "-"], input="\n")
    assert empty.exit_code == 2 and "`-` read no token from stdin" in empty.stderr


def test_a_bad_token_is_one_line_and_exit_2(env: None) -> None:
    result = run("aws", "register", "regtoken-nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: registration token: AWS Marketplace refused it (InvalidTokenException)")


def test_a_missing_product_code_names_the_variable(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESIGHT_AWS_MP_PRODUCT_CODE")
    result = run("aws", "meter", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"].startswith("FORESIGHT_AWS_MP_PRODUCT_CODE:")


def test_an_unknown_plan_in_the_dimension_map_is_refused(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESIGHT_AWS_MP_PLAN_DIMENSIONS", '{"gold": "platinum"}')
    result = run("aws", "reconcile")
    assert result.exit_code == 2 and "unknown plan(s) platinum" in result.stderr


@pytest.mark.parametrize(("cloud", "variable", "value"), [
    ("aws", "FORESIGHT_AWS_MP_PLAN_DIMENSIONS", "notjson"),
    ("gcp", "FORESIGHT_GCP_MP_PLANS", "["),
    ("azure", "FORESIGHT_AZURE_MP_PLANS", "starter=pro"),
])
def test_a_plan_map_that_is_not_json_is_a_configuration_error_naming_the_variable(
    cloud: str, variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_cloud_environment(monkeypatch)
    for name in REQUIRED[cloud]:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv(variable, value)
    result = run(cloud, "meter", "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith(f"{variable}: not JSON (") and 'expected an object such as {"starter": ' in error
    assert result.stderr == f"error: {error}\n"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_one_run_names_every_missing_variable(cloud: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_cloud_environment(monkeypatch)
    result = run(cloud, "reconcile")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {len(REQUIRED[cloud])} settings to fix: ")
    assert [name for name in REQUIRED[cloud] if f"{name}: " not in line] == []


def test_meter_and_reconcile_report_as_json(env: None, fake: MarketplaceFake) -> None:
    token, license_arn = fake.purchase("111122223333", "starter")
    tenant = json.loads(run("aws", "register", token, "--json").stdout)["tenant"]
    metered = json.loads(run("aws", "meter", "--json").stdout)
    assert tenant in [m["tenant"] for m in metered["metered"]]
    assert fake.usage(license_arn) == [0]

    fake.entitle(license_arn, "enterprise")
    reconciled = json.loads(run("aws", "reconcile", "--json").stdout)["reconciled"]
    assert {"tenant": tenant, "action": "plan enterprise"} in reconciled


def test_events_once_handles_the_queue(env: None, fake: MarketplaceFake, monkeypatch: pytest.MonkeyPatch,
                                       aws_session, moto_server) -> None:  # type: ignore[no-untyped-def]
    bus = Bus(aws_session, moto_server)
    monkeypatch.setenv("FORESIGHT_AWS_MP_QUEUE_URL", bus.queue_url)
    token, license_arn = fake.purchase("111122223333", "starter")
    tenant = json.loads(run("aws", "register", token, "--json").stdout)["tenant"]
    fake.entitle(license_arn, "pro")
    bus.publish("License Updated - Manufacturer", license_event(license_arn))

    result = run("aws", "events", "--once", "--wait", "1", "--json")
    assert result.exit_code == 0, result.output
    outcomes = [o for h in json.loads(result.stdout)["handled"] for o in h["outcomes"]]
    assert outcomes == [{"tenant": tenant, "action": "plan pro"}]


def test_events_needs_a_queue(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESIGHT_AWS_MP_QUEUE_URL", raising=False)
    result = run("aws", "events", "--once")
    assert result.exit_code == 2 and "FORESIGHT_AWS_MP_QUEUE_URL" in result.stderr


def test_events_json_streams_each_event_as_handled_and_an_interrupt_loses_none(
    env: None, fake: MarketplaceFake, monkeypatch: pytest.MonkeyPatch, aws_session, moto_server,  # type: ignore[no-untyped-def]
) -> None:
    """Without --once, `events` runs until stopped (a systemd service): each event is one JSON line, flushed
    when handled, and Ctrl-C ends the stream with one more line, the handled events' lines all printed."""
    bus = Bus(aws_session, moto_server)
    monkeypatch.setenv("FORESIGHT_AWS_MP_QUEUE_URL", bus.queue_url)
    expected = []
    for account, plan in (("111122223333", "pro"), ("444455556666", "enterprise")):
        token, license_arn = fake.purchase(account, "starter")
        expected.append({"tenant": json.loads(run("aws", "register", token, "--json").stdout)["tenant"],
                         "action": f"plan {plan}"})
        fake.entitle(license_arn, plan)
        bus.publish("License Updated - Manufacturer", license_event(license_arn))

    with Started("aws", "events", "--wait", "1", "--json") as events:
        streamed = [json.loads(events.line("stdout")) for _ in expected]  # while it runs, one object a line
        events.proc.send_signal(signal.SIGINT)
        code, rest, _ = events.finish()
    assert code == 130
    assert [json.loads(line) for line in rest] == [{"error": "interrupted", "exit_code": 130}]
    outcomes = [outcome for handled in streamed for outcome in handled["outcomes"]]
    assert sorted(outcomes, key=lambda o: o["tenant"]) == sorted(expected, key=lambda o: o["tenant"])
    assert bus.depth() == 0  # consumed, and every one of them reported above


def test_events_json_without_once_reports_a_failure_as_one_json_line(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORESIGHT_AWS_MP_QUEUE_URL", raising=False)
    result = run("aws", "events", "--json")
    assert result.exit_code == 2
    [line] = result.stdout.splitlines()
    failure = json.loads(line)
    assert failure["exit_code"] == 2 and failure["error"].startswith("FORESIGHT_AWS_MP_QUEUE_URL: ")
    assert result.stderr == f"error: {failure['error']}\n"


def test_build_writes_the_listing_artifacts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("build", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)["written"]
    template = json.loads((tmp_path / "aws/foresight.template.json").read_text())
    assert template["Parameters"]["ImageId"]["Type"] == "AWS::EC2::Image::Id"
    pattern = json.loads((tmp_path / "aws/eventbridge-pattern.json").read_text())
    assert pattern["source"] == ["aws.marketplace", "aws.agreement-marketplace"]
    ui = json.loads((tmp_path / "azure/createUiDefinition.json").read_text())
    assert ui["handler"] == "Microsoft.Azure.CreateUIDef"
    with zipfile.ZipFile(tmp_path / "azure/app.zip") as package:
        assert sorted(package.namelist()) == ["createUiDefinition.json", "mainTemplate.json"]
    main_tf = (tmp_path / "gcp/main.tf").read_text()
    assert 'resource "google_compute_instance"' in main_tf and (tmp_path / "gcp/metadata.yaml").is_file()
    on_disk = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(written) == sorted(str(p) for p in on_disk)  # everything reported, no temporary left behind


def test_build_refuses_a_gcp_folder_holding_files_the_module_does_not_have(tmp_path: Path) -> None:
    """They were reported as written, and a stale .tf would have gone to Terraform and the portal with the module."""
    assert run("build", "--out", str(tmp_path)).exit_code == 0
    (tmp_path / "gcp/old_outputs.tf").write_text('output "gone" { value = 1 }\n')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run("build", "--out", str(tmp_path), "--json")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"] == (
        f"--out {tmp_path}: gcp/ holds old_outputs.tf, which the module does not have (Terraform would load a "
        "stray .tf with it); remove it, or build into another --out")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written


def test_build_into_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    result = run("build", "--out", str(target), "--json")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout) == {"error": f"--out {target}: not a directory", "exit_code": 2}
    assert result.stderr == f"error: --out {target}: not a directory\n"
    beneath = run("build", "--out", str(target / "dist"))
    assert beneath.exit_code == 2
    assert beneath.stderr == f"error: --out {target / 'dist'}: a part of the path is a file, not a directory\n"
    assert target.read_text() == "keep me\n"


def test_the_installed_foresight_command_mounts_the_group(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Run outside the checkout, so only the installed package (pyproject's package list) can answer."""
    result = subprocess.run(
        [sys.executable, "-c", "from service.cli import main; main()", "marketplace", "aws", "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("register", "serve", "events", "meter", "reconcile"):
        assert command in result.stdout


@pytest.fixture
def azure_env(env: None, monkeypatch: pytest.MonkeyPatch, azure: AzureFake,
              azure_settings: AzureMarketplaceSettings) -> None:
    for name in ("tenant_id", "client_id", "offer_id", "api_url", "authority", "ca_file", "requests_per_unit"):
        monkeypatch.setenv(f"FORESIGHT_AZURE_MP_{name.upper()}", str(getattr(azure_settings, name)))


def test_azure_register_meter_and_reconcile(azure_env: None, azure: AzureFake, deployment: Deployment) -> None:
    token, subscription_id = azure.purchase("starter")
    token = "-" + token  # Azure's tokens are opaque; 1 in 64 of the fake's began with '-' and read as an option
    azure.tokens[token] = subscription_id
    registered = run("azure", "register", "--json", "--", token)
    assert registered.exit_code == 0, registered.output
    body = json.loads(registered.stdout)
    assert body["subscription_id"] == subscription_id
    assert deployment.redis(body["api_key"]).ping()  # at once: the registration loaded the tenant

    deployment.redis(body["api_key"]).mget([f"k{i}" for i in range(100)])
    metered = json.loads(run("azure", "meter", "--json").stdout)
    assert {"tenant": body["tenant"], "quantity": 1, "status": "Accepted"}.items() <= next(
        m for m in metered["metered"] if m["tenant"] == body["tenant"]).items()

    gone_token, gone_id = azure.purchase("starter")
    second = run("azure", "register", "--json", "--", gone_token)
    assert second.exit_code == 0, second.output
    gone = json.loads(second.stdout)["tenant"]
    del azure.subscriptions[gone_id]  # the Marketplace no longer knows it: that tenant fails, the others go on
    azure.subscriptions[subscription_id]["planId"] = "pro"
    result = run("azure", "reconcile", "--json")
    assert result.exit_code == 6
    report = json.loads(result.stdout)  # one object, errors included
    assert {"tenant": body["tenant"], "action": "plan pro"} in report["reconciled"]
    assert "answered 404" in report["errors"][gone] and body["tenant"] not in report["errors"]


def test_azure_settings_errors_name_the_variable(azure_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESIGHT_AZURE_MP_OFFER_ID")
    result = run("azure", "meter")
    assert result.exit_code == 2 and "FORESIGHT_AZURE_MP_OFFER_ID" in result.stderr


def test_serve_refuses_to_start_without_its_certificate(env: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("aws", "serve", "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"))
    assert result.exit_code == 2 and "--tls-cert" in result.stderr


def test_serve_answers_over_tls(env: None, deployment: Deployment, fake: MarketplaceFake) -> None:
    port = free_port()
    argv = [sys.executable, "-c", "from service.cli import main; main()", "marketplace", "aws", "serve",
            "--tls-cert", str(deployment.pki.cert), "--tls-key", str(deployment.pki.key), "--port", str(port)]
    with servers.process(argv, "marketplace-aws-serve"):
        servers.wait_until(lambda: servers.tcp_open(port), "the registration page", timeout=60)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(deployment.pki.ca_cert))) as client:
            token, _ = fake.purchase("111122223333", "starter")
            page = client.post(f"https://localhost:{port}/aws/register", data={"x-amzn-marketplace-token": token},
                               headers={"Accept": "application/json"})
            assert page.status_code == 201 and deployment.redis(page.json()["api_key"]).ping()
            bad = client.post(f"https://localhost:{port}/aws/register", data={"x-amzn-marketplace-token": "nope"})
            assert bad.status_code == 400 and "InvalidTokenException" in bad.text


def serve_argv(deployment: Deployment, *options: str) -> list[str]:
    return [*FORESIGHT, "marketplace", "aws", "serve", "--tls-cert", str(deployment.pki.cert),
            "--tls-key", str(deployment.pki.key), *options]


def test_serve_refuses_a_port_out_of_range(env: None, deployment: Deployment) -> None:
    """99999 is not wrapped round to 34463 (what the socket layer would do with it)."""
    result = subprocess.run(serve_argv(deployment, "--port", "99999"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--port" in result.stderr and "65535" in result.stderr


def test_serve_on_port_0_prints_the_port_it_listens_on(env: None, deployment: Deployment) -> None:
    with Started("aws", "serve", "--tls-cert", str(deployment.pki.cert), "--tls-key", str(deployment.pki.key),
                 "--port", "0") as serving:
        announced = None
        while announced is None:
            announced = re.fullmatch(r"Serving https://127\.0\.0\.1:(\d+) \(Ctrl-C stops\)", serving.line("stderr"))
        with httpx.Client(verify=ssl.create_default_context(cafile=str(deployment.pki.ca_cert))) as client:
            page = client.post(f"https://localhost:{announced[1]}/aws/register",
                               data={"x-amzn-marketplace-token": "nope"})
        assert page.status_code == 400 and "InvalidTokenException" in page.text


def test_serve_on_a_busy_port_exits_7_and_says_what_to_do(env: None, deployment: Deployment) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(serve_argv(deployment, "--port", str(port)), capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 7
    assert result.stderr.splitlines() == [f"error: listen on 127.0.0.1:{port}: the port is busy: stop what listens "
                                          "there, or pass another --port (0 picks a free one)"]


def test_serve_on_an_address_of_another_machine_is_exit_2(env: None, deployment: Deployment) -> None:
    result = subprocess.run(serve_argv(deployment, "--host", "192.0.2.1", "--port", "0"), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --host 192.0.2.1: not an address of this machine; pass one of "
                                          "its addresses, 0.0.0.0 for all of them, or 127.0.0.1"]


@pytest.fixture
def gcp_env(env: None, monkeypatch: pytest.MonkeyPatch, gcp_settings: GcpMarketplaceSettings) -> None:
    for name in ("provider_id", "signup_audience", "service_name", "product", "subscription", "requests_per_unit",
                 "procurement_url", "pubsub_url", "servicecontrol_url", "certs_url", "ca_file"):
        monkeypatch.setenv(f"FORESIGHT_GCP_MP_{name.upper()}", str(getattr(gcp_settings, name)))


def test_gcp_register_events_meter_and_reconcile(gcp_env: None, gcp: GcpFake, deployment: Deployment) -> None:
    token, entitlement_id = gcp.purchase("starter")
    registered = run("gcp", "register", token, "--json")
    assert registered.exit_code == 0, registered.output
    body = json.loads(registered.stdout)
    assert body["entitlement_id"] == entitlement_id and deployment.redis(body["api_key"]).ping()

    gcp.entitlements[entitlement_id].update(state="ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL", newPendingPlan="pro")
    gcp.publish("ENTITLEMENT_PLAN_CHANGE_REQUESTED", entitlement_id)
    handled = json.loads(run("gcp", "events", "--once", "--json").stdout)["handled"]
    assert [o for h in handled for o in h["outcomes"]] == [{"tenant": body["tenant"], "action": "plan pro"}]

    metered = json.loads(run("gcp", "meter", "--json").stdout)["metered"]
    assert any(m["tenant"] == body["tenant"] and m["status"] == "Reported" for m in metered)
    assert gcp.billed(entitlement_id) == [0]

    gcp.entitlements[entitlement_id]["state"] = "ENTITLEMENT_CANCELLED"
    reconciled = json.loads(run("gcp", "reconcile", "--json").stdout)["reconciled"]
    assert {"tenant": body["tenant"], "action": "ended"} in reconciled


def test_gcp_events_needs_a_subscription(gcp_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESIGHT_GCP_MP_SUBSCRIPTION")
    result = run("gcp", "events", "--once")
    assert result.exit_code == 2 and "FORESIGHT_GCP_MP_SUBSCRIPTION" in result.stderr


@pytest.mark.parametrize(("cloud", "sdk"), [("azure", "azure.identity"), ("gcp", "google.auth")])
def test_a_missing_cloud_sdk_says_which_extra_to_install(
    cloud: str, sdk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, sdk, None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, f"marketplace.{cloud}.fulfilment", raising=False)
    result = run(cloud, "meter")
    assert result.exit_code == 2
    assert f"pip install 'foresight[{cloud}]'" in result.stderr


def test_build_without_the_stacks_extra_says_which_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for name in [m for m in sys.modules if m.startswith(("stacks", "marketplace.aws.template", "marketplace.azure.t",
                                                         "marketplace.azure.ui", "marketplace.gcp.t",
                                                         "marketplace.gcp.blueprint", "marketplace.launch"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pulumi", None)  # as on a base install
    result = run("build", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "pip install 'foresight[stacks]'" in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("cloud", "credentials"), [
    ("aws", "boto3"), ("gcp", "GOOGLE_APPLICATION_CREDENTIALS"), ("azure", "AZURE_CLIENT_CERTIFICATE_PATH"),
])
def test_every_command_help_names_the_variables_it_needs(cloud: str, credentials: str) -> None:
    commands = ["register", "meter", "reconcile", "serve", *([] if cloud == "azure" else ["events"])]
    for command in commands:
        result = run(cloud, command, "--help")
        assert result.exit_code == 0, result.output
        text = " ".join(result.stdout.split())  # as wrapped for the terminal
        wanted = [*REQUIRED[cloud], credentials, "VAULT_ADDR", "VAULT_TOKEN", f"docs/marketplace-{cloud}.md"]
        assert [name for name in wanted if name not in text] == [], f"{cloud} {command} --help"
