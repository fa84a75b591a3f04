"""The SAM template validates, lints and builds without Docker; the generated schedules are current.

SAM CLI lives in its own tool environment, never in the project venv:
``uv tool install aws-sam-cli`` (puts ``sam`` in ``~/.local/bin``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.test_asl import template

ROOT = Path(__file__).resolve().parents[2]
#: the functions' Python: the template's Globals Runtime
RUNTIME = re.findall(r"^    Runtime: (python3\.\d+)", (ROOT / "template.yaml").read_text(), re.M)[0]


def sam_binary() -> str:
    found = shutil.which("sam") or str(Path.home() / ".local/bin/sam")
    if not Path(found).exists():
        why = "sam CLI is not installed: `make test` installs it into .tools/ (its own tool env, not .venv)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must prove the template builds, never skip it
        pytest.skip(why)
    return found


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["template.yaml", "infra/schedules.yaml"])
def test_sam_validate_lint_passes(template: str) -> None:
    result = run(sam_binary(), "validate", "--lint", "--template-file", template)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_the_layer_is_built_for_the_runtime_the_template_names() -> None:
    # the layer's Makefile installs wheels for, and compiles with, the functions' Python and
    # architecture: the template's Globals are the one place they are chosen, the Makefile follows
    template = (ROOT / "template.yaml").read_text()
    makefile = (ROOT / "layers" / "syncback" / "Makefile").read_text()
    architecture = re.search(r"Architectures: \[(\w+)\]", template)
    assert architecture is not None
    assert f"PYTHON := {RUNTIME}" in makefile, (
        "layers/syncback/Makefile: set PYTHON to the template's Runtime"
    )
    assert f"ARCH := {architecture.group(1)}" in makefile, (
        "layers/syncback/Makefile: set ARCH to Architectures"
    )
    assert template.count(f"CompatibleRuntimes: [{RUNTIME}]") == 2


@pytest.mark.slow
def test_sam_build_without_docker_builds_the_layer_and_every_function(tmp_path: Path) -> None:
    build = tmp_path / "build"
    result = run(sam_binary(), "build", "--template-file", "template.yaml", "--build-dir", str(build))
    assert result.returncode == 0, result.stdout + result.stderr
    layer = build / "SyncbackLayer" / "python"
    assert (layer / "syncback" / "runner.py").exists() and (layer / "pydantic").is_dir()
    # every registered destination's package, its client included
    from syncback.destinations.catalog import REGISTRY

    for name in REGISTRY:
        assert (layer / "syncback" / "destinations" / name / "client.py").exists(), name
    assert not (layer / "duckdb").exists(), "duckdb is not a runtime dependency of the layer"
    # every module ships compiled, used as it is (Lambda's /opt is read-only: no .pyc is written there)
    for module in ("syncback/aws", "syncback/destinations/catalog", "pydantic/main"):
        folder, name = (layer / module).parent, (layer / module).name
        compiled = (
            folder / "__pycache__" / f"{name}.cpython-{RUNTIME.removeprefix('python').replace('.', '')}.pyc"
        )
        flags = int.from_bytes(compiled.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{compiled}: not an unchecked-hash .pyc (PEP 552 flags {flags:#04b})"
    assert not list((layer / "syncback").rglob("*.egg-info")), "no build leftovers in the layer"
    for name in ("Plan", "Deliver", "Commit", "Trigger", "Replay"):
        assert (build / f"{name}Function" / "app.py").exists()
    assert (build / "SyncSchedules" / "template.yaml").exists()
    # the project layer is the spec files and nothing else (never .syncback/ or a DuckDB file)
    project = build / "SyncProjectLayer"
    shipped = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert shipped == [
        "syncback.yaml",
        *(f"syncs/{p.name}" for p in sorted((ROOT / "project/syncs").glob("*.yaml"))),
    ]


@pytest.mark.slow
def test_the_asl_with_the_templates_substitutions_passes_cfn_lint(tmp_path: Path) -> None:
    # DefinitionUri files are not linted by `sam validate --lint`: lint the rendered definition
    # inline instead (cfn-lint checks a state machine's structure, rule E3601)
    substitutions = template()["Resources"]["SyncRunStateMachine"]["Properties"]["DefinitionSubstitutions"]
    text = (ROOT / "infra/statemachine/sync.asl.json").read_text()
    for name, value in substitutions.items():  # an intrinsic (!GetAtt X.Arn) stands in as its text
        text = text.replace("${" + name + "}", str(value))
    machine = {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {"RoleArn": "arn:aws:iam::123456789012:role/sync-run", "Definition": json.loads(text)},
    }
    rendered = tmp_path / "asl.yaml"
    rendered.write_text(
        yaml.safe_dump({"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"SyncRun": machine}})
    )
    result = run(sam_binary(), "validate", "--lint", "--template-file", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_schedules_match_the_project() -> None:
    # Given the project's syncs, When the schedules are rendered, Then infra/schedules.yaml is that output
    check = run(sys.executable, "infra/render_schedules.py", "--check")
    assert check.returncode == 0, check.stderr
    schedules = yaml.safe_load((ROOT / "infra/schedules.yaml").read_text())["Resources"]
    assert schedules["ScheduleContactsToHubspot"]["Properties"]["ScheduleExpression"] == "rate(1 hour)"


def test_a_sync_without_schedule_gets_none_and_an_empty_project_still_deploys(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "infra"))
    try:
        import render_schedules
    finally:
        sys.path.remove(str(ROOT / "infra"))
    project = tmp_path / "project"
    (project / "syncs").mkdir(parents=True)
    shutil.copy(ROOT / "project/syncback.yaml", project / "syncback.yaml")
    spec = yaml.safe_load((ROOT / "project/syncs/contacts_to_hubspot.yaml").read_text())
    out = tmp_path / "schedules.yaml"
    # an empty project: a placeholder keeps the nested stack valid
    assert render_schedules.main(["--project", str(project), "--out", str(out)]) == 0
    assert list(yaml.safe_load(out.read_text())["Resources"]) == ["NoScheduledSyncs"]
    # one sync with a schedule, one without
    (project / "syncs/contacts_to_hubspot.yaml").write_text(yaml.safe_dump(spec))
    (project / "syncs/manual_only.yaml").write_text(
        yaml.safe_dump({**spec, "name": "manual_only", "schedule": None})
    )
    assert render_schedules.main(["--project", str(project), "--out", str(out)]) == 0
    resources = yaml.safe_load(out.read_text())["Resources"]
    schedules = [k for k, r in resources.items() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert schedules == ["ScheduleContactsToHubspot"]
    # both have their failed-run alarm (alerts.on_failure is on by default)
    assert {"AlarmContactsToHubspotFailed", "AlarmManualOnlyFailed"} <= set(resources)
