"""The SyncRun ASL matches the code's error names, and the template wires every substitution."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from syncback import errors

ROOT = Path(__file__).resolve().parents[2]
ASL = ROOT / "infra/statemachine/sync.asl.json"
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def asl() -> dict[str, Any]:
    """Return the ASL parsed, numeric placeholders standing in as 1 and string ones left as they are."""
    text = re.sub(r":\s*\$\{\w+\}", ": 1", ASL.read_text())
    document: dict[str, Any] = json.loads(text)
    return document


def states(machine: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in machine["States"].items():
        yield name, state
        if "ItemProcessor" in state:
            yield from states(state["ItemProcessor"])


def clauses(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states(asl()):
        for clause in state.get(kind, []):
            yield name, clause


def error_classes() -> dict[str, type]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.SyncbackError)
    }


def template() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", any_tag)
    document: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    return document


def test_every_error_name_in_the_asl_is_an_error_class_or_a_service_error() -> None:
    names = {n for kind in ("Retry", "Catch") for _, clause in clauses(kind) for n in clause["ErrorEquals"]}
    ours = {n for n in names if not n.startswith(("States.", "Lambda.", "Sandbox."))}
    # Given the names the ASL matches, When compared with errors.py, Then each is exactly a class there
    assert ours and ours <= set(error_classes()), ours - set(error_classes())
    # and none is a base class: ErrorEquals does not match subclasses
    assert not ours & {"SyncbackError", "TransientError", "PermanentError"}


def test_retries_name_only_transient_errors_with_backoff_and_jitter() -> None:
    classes = error_classes()
    for state, clause in clauses("Retry"):
        ours = [n for n in clause["ErrorEquals"] if n in classes]
        assert all(issubclass(classes[n], errors.TransientError) for n in ours), (state, ours)
        if ours:
            assert clause["BackoffRate"] > 1 and clause["JitterStrategy"] == "FULL", state


def test_every_transient_error_is_retried_by_deliver() -> None:
    deliver = dict(states(asl()))["DeliverBatch"]
    retried = {n for clause in deliver["Retry"] for n in clause["ErrorEquals"]}
    transient = {
        n
        for n, c in error_classes().items()
        if issubclass(c, errors.TransientError) and c is not errors.TransientError
    }
    assert transient <= retried
    # and only those (and a Lambda that timed out or died) send a batch to the dead letters:
    # credentials refused, a systemic refusal, anything else fails the map and so the run
    (catch,) = deliver["Catch"]
    assert set(catch["ErrorEquals"]) == transient | {"Sandbox.Timedout", "Lambda.Unknown"}
    assert catch["Next"] == "SendBatchToDeadLetters"


def test_a_lambda_that_timed_out_is_retried_a_bounded_number_of_times() -> None:
    for name in ("Plan", "DeliverBatch", "Commit", "CommitAfterFailure"):
        state = dict(states(asl()))[name]
        (clause,) = [c for c in state["Retry"] if "Sandbox.Timedout" in c["ErrorEquals"]]
        assert "Lambda.Unknown" in clause["ErrorEquals"] and 1 <= clause["MaxAttempts"] <= 2, name


def test_a_plan_or_commit_that_fails_for_good_records_the_run_and_frees_the_lock() -> None:
    machine = dict(states(asl()))
    for name, target in (
        ("Plan", "AbandonRun"),
        ("Commit", "AbandonAfterCommit"),
        ("CommitAfterFailure", "AbandonAfterCommit"),
    ):
        assert machine[name]["Catch"][-1] == {
            **machine[name]["Catch"][-1],
            "ErrorEquals": ["States.ALL"],
            "Next": target,
        }
    for name in ("AbandonRun", "AbandonAfterCommit"):
        assert machine[name]["Parameters"]["Payload"]["abandon"] is True


def test_deliver_is_a_distributed_map_over_the_manifest_without_item_batcher() -> None:
    deliver = asl()["States"]["Deliver"]
    assert deliver["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert deliver["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert "ItemBatcher" not in deliver and deliver["ResultPath"] is None


def test_the_template_substitutes_every_placeholder_of_the_asl() -> None:
    placeholders = set(PLACEHOLDER.findall(ASL.read_text()))
    machine = template()["Resources"]["SyncRunStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "infra/statemachine/sync.asl.json"
    assert placeholders == set(machine["DefinitionSubstitutions"])


def test_no_function_is_granted_every_queue_of_the_account() -> None:
    # SAM's SQS event adds a managed policy on every queue: queues are wired as explicit mappings
    resources = template()["Resources"]
    for name, resource in resources.items():
        events = resource.get("Properties", {}).get("Events", {}) or {}
        assert all(e["Type"] != "SQS" for e in events.values()), name
    mappings = {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
    }
    assert set(mappings) == {"TriggerFunction", "ReplayFunction"}
    assert mappings["ReplayFunction"]["ScalingConfig"]["MaximumConcurrency"] == 2
    for function, queue in (("TriggerFunction", "SyncRequestQueue"), ("ReplayFunction", "ReplayQueue")):
        statements = [
            s
            for p in resources[function]["Properties"]["Policies"]
            if isinstance(p, dict)
            for s in p.get("Statement", [])
        ]
        reads = [s for s in statements if "sqs:ReceiveMessage" in s["Action"]]
        assert reads and all(s["Resource"] == f"{queue}.Arn" for s in reads), function


def test_the_replay_function_may_take_the_run_lock_and_alarms_watch_every_function_and_queue() -> None:
    resources = template()["Resources"]
    statements = [
        s for p in resources["ReplayFunction"]["Properties"]["Policies"] for s in p.get("Statement", [])
    ]
    assert any("dynamodb:PutItem" in s["Action"] and s["Resource"] == "RunsTable.Arn" for s in statements)
    alarms = {
        r["Properties"]["AlarmName"].split("}-", 1)[-1]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert {
        "failed-runs",
        "timed-out-runs",
        "dead-letters",
        "trigger-errors",
        "replay-errors",
        "sync-requests-failed",
    } <= alarms
