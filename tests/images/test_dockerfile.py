"""The service image's Dockerfile: hadolint and checkov find nothing, and it has the shape the issue asks for."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.images.tools import IMAGES, REPO, require_tool, run_checkov

DOCKERFILE = IMAGES / "service" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_hadolint_ignore_says_why_on_its_line_and_is_needed(tmp_path: Path) -> None:
    """Without its ignore, hadolint reports the rule on the next instruction: no ignore outlives its finding."""
    hadolint = require_tool("hadolint")
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [number for number, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert pragmas
    for number in pragmas:
        rules, _, reason = lines[number].removeprefix("# hadolint ignore=").partition("  # ")
        assert reason.strip(), f"line {number + 1}: the reason goes on the ignore's line"
        without = tmp_path / "Dockerfile"
        without.write_text("\n".join(lines[:number] + lines[number + 1 :]) + "\n")
        result = subprocess.run([hadolint, "--no-fail", "-f", "json", str(without)], capture_output=True, text=True)
        reported = {finding["code"] for finding in json.loads(result.stdout) if finding["line"] == number + 1}
        assert set(rules.split(",")) <= reported, (lines[number], reported)


def test_checkov_has_no_failed_check() -> None:
    report = run_checkov(DOCKERFILE, "dockerfile", cwd=REPO)
    summary = report["summary"]
    assert summary["failed"] == 0, json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["passed"] >= 100, summary  # the checks really ran
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= {"CKV_DOCKER_7"}, skipped


def test_base_image_defaults_to_a_pinned_cuda_runtime() -> None:
    steps = instructions(DOCKERFILE.read_text())
    default = next(args for op, args in steps if op == "ARG" and args.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=docker\.io/nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", default), default
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    assert all(stage.startswith("${BASE_IMAGE}") for stage in stages), stages


def test_runtime_stage_runs_the_service_as_non_root_under_tini() -> None:
    stage = runtime_stage()
    users = [args for op, args in stage if op == "USER"]
    assert users and users[-1] == "10001:10001"
    entrypoint = json.loads(next(args for op, args in stage if op == "ENTRYPOINT"))
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2].endswith("/foresight")
    assert json.loads(next(args for op, args in stage if op == "CMD")) == ["serve"]


def test_runtime_stage_has_healthcheck_ports_and_oci_labels() -> None:
    stage = runtime_stage()
    healthcheck = next(args for op, args in stage if op == "HEALTHCHECK")
    assert "healthcheck.py" in healthcheck
    exposed = {port for op, args in stage if op == "EXPOSE" for port in args.split()}
    assert exposed == {"6380", "8443"}
    labels = " ".join(args for op, args in stage if op == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_no_secret_reaches_the_build() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)(password|secret|token|api_key)\s*=", text)
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*", ".dockerignore starts from an empty context and allows back what the image needs"
    for pattern in ("**/*.pem", "**/*.key", "**/.env"):
        assert pattern in patterns, pattern


def test_dependencies_install_exactly_as_the_hash_lock_pins_them() -> None:
    """torch (its own index), the lock (every file hashed, no resolving) and the project (no dependencies)."""
    installs = [args for op, args in instructions(DOCKERFILE.read_text()) if op == "RUN" and "pip install" in args]
    torch, lock, project = installs
    assert '"${TORCH_SPEC}"' in torch
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:", "--requirement /tmp/requirements.lock"):
        assert flag in lock, flag
    assert lock.index("pip check") > lock.index("pip install")
    assert "--no-deps" in project and "pip check" in project
    copies = [args.split() for op, args in instructions(DOCKERFILE.read_text()) if op == "COPY"]
    assert ["images/service/requirements.lock", "/tmp/requirements.lock"] in copies


def test_the_build_context_holds_every_file_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list: a COPY of a file it does not allow back fails the build."""
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    steps = instructions(DOCKERFILE.read_text())
    sources = [args.split()[:-1] for op, args in steps if op == "COPY" and not args.startswith("--from")]
    for source in (s for group in sources for s in group if s != "."):
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is not in the context"
