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
    ours = {n for n in names if not n.startswith(("States.", "Lambda."))}
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
    assert deliver["Catch"][0]["ErrorEquals"] == ["States.ALL"]


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
