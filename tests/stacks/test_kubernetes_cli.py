"""`foresight kubernetes render`: the same manifests as `render(spec)`, to stdout or one file each; a bad config
is one line naming the key, and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from stacks.kubernetes.cli import app
from stacks.kubernetes.manifests import render
from stacks.kubernetes.spec import parse_spec
from tests.stacks.test_kubernetes_manifests import BASE, ROOT

EXAMPLE = ROOT / "stacks/kubernetes/example.yaml"


def test_render_to_stdout_is_the_rendered_manifests_as_multi_document_yaml() -> None:
    result = CliRunner().invoke(app, ["render", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    expected = render(parse_spec(yaml.safe_load(EXAMPLE.read_text())))
    assert list(yaml.safe_load_all(result.stdout)) == json.loads(json.dumps(expected))
    assert "&id" not in result.stdout  # no YAML anchors for kubectl users to puzzle over


def test_render_json_config_as_a_kubectl_list(tmp_path: Path) -> None:
    config = tmp_path / "workload.json"
    config.write_text(json.dumps(BASE))
    result = CliRunner().invoke(app, ["render", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["kind"] == "List" and listing["items"] == json.loads(json.dumps(render(parse_spec(BASE))))


def test_render_into_a_directory_writes_one_file_per_manifest_in_apply_order(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(app, ["render", "--config", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [
        "01-serviceaccount-foresight.yaml",
        "02-configmap-foresight-env.yaml",
        "03-networkpolicy-foresight.yaml",
        "04-service-foresight-pods.yaml",
        "05-service-foresight.yaml",
        "06-statefulset-foresight.yaml",
        "07-poddisruptionbudget-foresight.yaml",
    ]
    assert [yaml.safe_load(f.read_text())["kind"] for f in files][-1] == "PodDisruptionBudget"


def test_invalid_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**BASE, "allowedCidrs": ["10.0.0.0/33"]}))
    result = CliRunner().invoke(app, ["render", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {config}: allowedCidrs: '10.0.0.0/33' is not a valid CIDR\n"


def test_unparsable_or_missing_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("namespace: [unclosed\n")
    for path in (config, tmp_path / "absent.yaml"):
        result = CliRunner().invoke(app, ["render", "--config", str(path)])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr


def test_a_binary_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "workload.yaml"
    config.write_bytes(b"\xa6\x00\xff" * 50)
    result = CliRunner().invoke(app, ["render", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {config}: config: not a text file (YAML or JSON in UTF-8)\n"


def test_an_out_that_is_a_file_or_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    for out, why in ((a_file, "not a directory"), (a_file / "below", "Not a directory")):
        result = CliRunner().invoke(app, ["render", "--config", str(EXAMPLE), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: --out {out}: {why}\n"
    assert a_file.read_text() == "keep me"


def _render_into(out: Path, config: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["render", "--config", str(config), "--out", str(out), *extra])
    return result.exit_code, result.stderr


def test_a_second_render_of_another_workload_never_leaves_the_first_ones_manifests_to_apply(tmp_path: Path) -> None:
    """`kubectl apply -f DIR` applies every file: an earlier render's must not stay beside the new one's."""
    out = tmp_path / "manifests"
    assert _render_into(out, EXAMPLE)[0] == 0
    first = sorted(f.name for f in out.iterdir())
    other = tmp_path / "other.yaml"
    other.write_text(EXAMPLE.read_text().replace("name: foresight", "name: cache2", 1))
    code, err = _render_into(out, other)
    assert code == 2 and "holds other files" in err and "--replace" in err, err
    assert sorted(f.name for f in out.iterdir()) == first  # refused: nothing written
    code, err = _render_into(out, other, "--replace")
    assert code == 0, err
    names = sorted(f.name for f in out.iterdir())
    assert len(names) == len(first) and not set(names) & set(first), names
    assert all("cache2" in name for name in names), names


def test_replace_still_refuses_files_it_did_not_render(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: []\n")
    code, err = _render_into(out, EXAMPLE, "--replace")
    assert code == 2 and "kustomization.yaml" in err, err
    assert [f.name for f in out.iterdir()] == ["kustomization.yaml"]


def test_rendering_again_into_its_own_directory_needs_no_replace(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    assert _render_into(out, EXAMPLE)[0] == 0
    assert _render_into(out, EXAMPLE) == (0, f"wrote 7 manifests to {out}\n")


def test_foresight_command_mounts_the_group() -> None:
    """Through the real entry point, as an operator types it."""
    code = "import sys; from service.cli import main; sys.argv[0] = 'foresight'; main()"
    command = [sys.executable, "-c", code, "kubernetes", "render", "--config", str(EXAMPLE), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"][0]["kind"] == "ServiceAccount"
