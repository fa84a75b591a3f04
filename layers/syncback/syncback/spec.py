"""The sync spec (``syncs/*.yaml``) and the project config (``syncback.yaml``), and their loading.

Loading never stops at the first mistake: every file is read and every problem is reported as
``file: field: message`` with what to do about it, then ``ConfigError`` carries them all.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from syncback.destinations.catalog import REGISTRY
from syncback.destinations.registry import Mode, sync_problems
from syncback.errors import ConfigError, Problem
from syncback.spec_parts import URL_PATTERN, Check, DestinationBase, SecretRef, Strict, secret_ref

SYNC_NAME = r"^[a-z][a-z0-9_]{0,62}$"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$"
TRANSFORMS = ("lower", "upper", "trim", "string", "integer", "float", "boolean", "iso_date", "sha256")
Transform = Literal["lower", "upper", "trim", "string", "integer", "float", "boolean", "iso_date", "sha256"]

_FROM = re.compile(r"\b(from|join)\s+([A-Za-z_\"][\w.\"$]*)", re.I)
_CTE = re.compile(r"(?:\bwith|,)\s*([A-Za-z_][\w$]*)\s+as\s*\(", re.I)
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\(([^()]+)\)$")


# ---- project config ---------------------------------------------------------------------------

#: memory a DuckDB thread needs for a plan's and a commit's statements (at ten million rows, two
#: threads within 192MB met every bench target)
MB_PER_THREAD = 96
#: memory a thread reading receipts needs: its JSON buffers alone take 32 MiB or more (receipts of
#: 10,000 audience members, 3.4 MB each, took about 90 MB a thread), so staging them runs on fewer
#: threads where the limit is low; with a thread per core a low limit failed every commit
MB_PER_READER = 128
#: the least ``memory_limit`` a DuckDB warehouse may have: one reader's worth
MIN_DUCKDB_MB = MB_PER_READER
#: the default: two threads' worth
DEFAULT_DUCKDB_MEMORY = f"{2 * MB_PER_THREAD}MB"
_UNITS = {"KB": 1 / 1000, "MB": 1, "GB": 1000, "TB": 1000_000}


def megabytes(memory_limit: str) -> float:
    """Return a memory size such as ``256MB`` or ``1.5 GB`` in megabytes."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]B)", memory_limit.strip().upper())
    if found is None:
        raise ValueError(f"not a memory size: {memory_limit!r} (give a number and KB, MB, GB or TB)")
    return float(found.group(1)) * _UNITS[found.group(2)]


class DuckDBWarehouseConfig(Strict):
    """The embedded default: a DuckDB file, relative to the project folder."""

    type: Literal["duckdb"]
    path: str = Field("warehouse.duckdb", description="DuckDB file, relative to the project folder")
    lock_wait_s: float = Field(
        30.0,
        ge=0,
        description="how long a run waits while another process holds the file (one writer at a time)",
    )
    memory_limit: str = Field(
        DEFAULT_DUCKDB_MEMORY,
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB)$",
        description=(
            "how much memory DuckDB may use; beyond it, it spills to <file>.tmp/ (a plan of any size "
            f"fits). At least {MIN_DUCKDB_MB}MB; DuckDB uses a thread per {MB_PER_THREAD}MB of it, up to one "
            f"per core (and one per {MB_PER_READER}MB while it reads receipts)"
        ),
    )

    @field_validator("memory_limit")
    @classmethod
    def _enough_memory(cls, value: str) -> str:
        if megabytes(value) < MIN_DUCKDB_MB:
            raise ValueError(
                f"{value} is too little: reading a run's receipts alone needs about 100MB; "
                f"give at least {MIN_DUCKDB_MB}MB (the default is {DEFAULT_DUCKDB_MEMORY})"
            )
        return value


class _SnowflakeLogin(Strict):
    """A Snowflake user with key-pair (preferred) or password auth."""

    user: str
    private_key: SecretRef | None = Field(None, description="PEM private key, as env:NAME or secret:NAME")
    private_key_passphrase: SecretRef | None = None
    password: SecretRef | None = None

    _check_refs = field_validator("private_key", "private_key_passphrase", "password")(
        lambda v: None if v is None else secret_ref(v)
    )

    @model_validator(mode="after")
    def _one_auth(self) -> _SnowflakeLogin:
        if (self.private_key is None) == (self.password is None):
            raise ValueError("give exactly one of private_key (key-pair auth, preferred) or password")
        return self


class SnowflakeStateAccess(_SnowflakeLogin):
    """The state schema's own credentials on the same account (least privilege): the models' SQL
    runs with the warehouse's credentials, which need no grant on the state schema, and hands the
    rows a plan reads (key, mapped and checked columns) over in ``stage_schema``."""

    role: str = Field(description="the role that owns the state schema")
    stage_schema: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$",
        description="where a plan's model rows are handed over: the warehouse's role creates tables "
        "there, this role reads them (database.schema, or a schema of the warehouse's database)",
    )


class SnowflakeWarehouseConfig(_SnowflakeLogin):
    """Snowflake through snowflake-connector-python, with key-pair (preferred) or password auth."""

    type: Literal["snowflake"]
    account: str
    role: str | None = None
    warehouse: str | None = None
    database: str | None = None
    schema_: str | None = Field(None, alias="schema")
    state_access: SnowflakeStateAccess | None = Field(
        None, description="optional: the state schema's own user and role, apart from the models'"
    )

    def for_state(self) -> SnowflakeWarehouseConfig:
        """Return this warehouse as the state schema reaches it: its own login where it has one."""
        access = self.state_access
        if access is None:
            return self
        login = {k: getattr(access, k) for k in ("user", "private_key", "private_key_passphrase", "password")}
        return self.model_copy(update={**login, "role": access.role, "state_access": None})


WarehouseConfig = Annotated[DuckDBWarehouseConfig | SnowflakeWarehouseConfig, Field(discriminator="type")]


class StateConfig(Strict):
    """Where syncback keeps its state: snapshots in a warehouse schema, history in local files."""

    warehouse: str = Field(description="which warehouse holds the snapshot tables")
    schema_: str = Field("syncback", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    path: str = Field(".syncback", description="local run history and dead letters, relative to the project")
    retention_days: int = Field(
        400, ge=1, description="days the warehouse's sync_runs and sync_changelog keep a run's rows"
    )


class LineageConfig(Strict):
    """Where OpenLineage run events go: an HTTP endpoint or a file (one JSON event a line)."""

    url: str | None = Field(
        None,
        pattern=URL_PATTERN,
        description="an OpenLineage endpoint; events are POSTed to url/api/v1/lineage",
    )
    file: str | None = Field(None, description="or a file, relative to the project, one event a line")
    api_key: SecretRef | None = Field(None, description="a bearer token for url, as env:NAME or secret:NAME")
    namespace: str = Field("syncback", min_length=1, description="the namespace of the syncs' jobs")

    _check_key = field_validator("api_key")(lambda v: None if v is None else secret_ref(v))

    @model_validator(mode="after")
    def _one_place(self) -> LineageConfig:
        if (self.url is None) == (self.file is None):
            raise ValueError("give url (an OpenLineage endpoint) or file, one of them")
        if self.api_key is not None and self.url is None:
            raise ValueError("api_key goes with url")
        return self


class ProjectConfig(Strict):
    """``syncback.yaml``: the warehouses syncs may read, and where state lives."""

    warehouses: dict[str, WarehouseConfig] = Field(min_length=1)
    state: StateConfig
    lineage: LineageConfig | None = Field(None, description="optional: OpenLineage run events of every run")

    @model_validator(mode="after")
    def _state_warehouse_exists(self) -> ProjectConfig:
        if self.state.warehouse not in self.warehouses:
            known = ", ".join(sorted(self.warehouses))
            raise ValueError(f"state.warehouse {self.state.warehouse!r} is not defined; known: {known}")
        return self


# ---- sync spec --------------------------------------------------------------------------------


class FieldMapping(Strict):
    """One destination field: a column (optionally transformed) or a constant value."""

    column: str | None = None
    value: str | int | float | bool | None = None
    transform: Transform | list[Transform] | None = None
    on_null: Literal["send", "skip"] = Field(
        "send", description="send: write null (clears the field); skip: leave the destination's value"
    )

    @model_validator(mode="after")
    def _column_or_value(self) -> FieldMapping:
        if (self.column is None) == ("value" not in self.model_fields_set):
            raise ValueError("give exactly one of column (a model column) or value (a constant)")
        if self.column is None and "on_null" in self.model_fields_set:
            raise ValueError("on_null applies to columns; a constant value is never null, remove on_null")
        return self

    @property
    def transforms(self) -> list[str]:
        if self.transform is None:
            return []
        return [self.transform] if isinstance(self.transform, str) else list(self.transform)


if TYPE_CHECKING:  # what the engine may read of any destination's config
    DestinationConfig = DestinationBase
else:  # every registered destination's config, told apart by its ``type``
    DestinationConfig = Annotated[
        Union[tuple(kind.config for kind in REGISTRY.values())],  # noqa: UP007 (built at run time)
        Field(discriminator="type"),
    ]


class Guards(Strict):
    """Safety guards checked on every plan."""

    max_delete_pct: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="stop a plan deleting more than this % of the snapshot (mirror)",
    )
    max_invalid_pct: float = Field(
        default=0,
        ge=0,
        le=100,
        description="a run with more invalid rows than this % of the model ends partial (exit 1), not "
        "succeeded; a run whose every row is invalid fails",
    )


class Alerts(Strict):
    """When a sync needs its owner: ``syncback status`` shows the alerts that hold now."""

    on_failure: bool = Field(default=True, description="the last run failed")
    max_rejected_pct: float | None = Field(
        default=None, ge=0, le=100, description="more than this % of the last run's records rejected"
    )
    max_invalid_pct: float | None = Field(
        default=None, ge=0, le=100, description="more than this % of the model invalid"
    )
    max_hours_without_success: float | None = Field(
        default=None,
        gt=0,
        description="no succeeded or partial run for this many hours (a schedule that stopped)",
    )


class SyncSpec(Strict):
    """One sync: a model, its primary key, a destination, a mode and a mapping."""

    name: str = Field(pattern=SYNC_NAME)
    description: str | None = None
    owner: str | None = Field(None, description="who owns this sync's logic (a team or a person)")
    warehouse: str
    model: str | None = Field(None, description="a SELECT whose rows are synced")
    table: str | None = Field(None, pattern=IDENTIFIER, description="or a table or view name")
    primary_key: str = Field(
        min_length=1, pattern=r"^[^\x00-\x1f\"]+$", description="the column that names a row (any name)"
    )
    mode: Mode = "upsert"
    destination: DestinationConfig
    mapping: dict[str, FieldMapping] = Field(
        min_length=1, description="destination field: a column name, or a field mapping"
    )
    schedule: str | None = Field(None, description="rate(1 hour), cron(0 6 * * ? *), or left out")
    guards: Guards = Field(default_factory=Guards)
    remove_not_created: Literal["leave", "clear_fields"] = Field(
        "leave",
        description="mirror: what becomes of a record this sync did not create when its row leaves the model "
        "(records it created are archived): leave it, or clear_fields (empty the fields this sync maps, "
        "except the identifier)",
    )
    batch_size: int = Field(1000, ge=1, le=50_000, description="changes per batch (one delivery unit)")
    max_changes_per_run: int | None = Field(
        None,
        ge=1,
        description="send at most this many changes a run; the rest wait for the next run (a first "
        "sync of millions spread over several scheduled runs)",
    )
    alerts: Alerts = Field(default_factory=Alerts)
    checks: list[Check] = Field(
        default_factory=list,
        description="data checks evaluated in the warehouse before anything is sent; a failing one "
        "stops the run (severity error) or warns (severity warn)",
    )

    @field_validator("mapping", mode="before")
    @classmethod
    def _column_shorthand(cls, value: Any) -> Any:
        # `email: email_address` is short for `email: {column: email_address}`
        if isinstance(value, dict):
            return {k: {"column": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            check_schedule(value)
        return value

    @model_validator(mode="after")
    def _shape(self) -> SyncSpec:
        if (self.model is None) == (self.table is None):
            raise ValueError("model: give exactly one of model (a SELECT) or table (a table name)")
        problems = sync_problems(self)
        if problems:
            field, message = problems[0]
            raise ValueError(f"{field}: {message}")
        if self.mode == "mirror" and (self.guards is None or self.guards.max_delete_pct is None):
            raise ValueError(
                "guards: mirror mode deletes records; add guards: {max_delete_pct: 10} (or your limit)"
            )
        return self

    @property
    def model_sql(self) -> str:
        """The model as one SELECT."""
        return self.model.strip().rstrip(";") if self.model else f"select * from {self.table}"

    @property
    def columns(self) -> list[str]:
        """The model columns the mapping reads: the only ones that leave the warehouse."""
        return list(dict.fromkeys(m.column for m in self.mapping.values() if m.column is not None))

    def tables_read(self) -> list[tuple[str, str]]:
        """The tables the model names, each with the word before it (``from`` or ``join``), in order;
        names a WITH clause defines are left out. Read from the SQL's text, so a table named only
        inside a function or a string is missed."""
        if self.table:
            return [("from", self.table)]
        sql = self.model or ""
        defined = {name.lower() for name in _CTE.findall(sql)}
        return [(word.lower(), name) for word, name in _FROM.findall(sql) if name.lower() not in defined]


def check_schedule(value: str) -> None:
    """Raise ValueError unless ``value`` is an EventBridge ``rate(...)`` or ``cron(...)`` expression."""
    rate = _RATE.match(value)
    if rate:
        amount, unit = int(rate.group(1)), rate.group(2)
        if amount < 1 or (amount == 1) == unit.endswith("s"):
            raise ValueError(f"{value!r}: write rate(1 hour) or rate(5 minutes): singular unit for 1 only")
        return
    cron = _CRON.match(value)
    if not cron:
        raise ValueError(f"{value!r} is neither rate(N unit) nor cron(min hour day month weekday year)")
    fields = cron.group(1).split()
    if len(fields) != 6:
        raise ValueError(
            f"{value!r} has {len(fields)} fields; EventBridge cron takes 6: min hour day-of-month month "
            "day-of-week year, e.g. cron(0 6 * * ? *)"
        )
    ok = re.compile(r"^[0-9A-Za-z*?/,#L-]+$")
    bad = [f for f in fields if not ok.match(f)]
    if bad:
        raise ValueError(f"{value!r}: {bad[0]!r} is not a cron field")
    if "?" not in (fields[2], fields[4]):
        raise ValueError(f"{value!r}: day-of-month or day-of-week must be '?', e.g. cron(0 6 * * ? *)")
    for pos, (lo, hi) in ((0, (0, 59)), (1, (0, 23))):
        if fields[pos].isdigit() and not lo <= int(fields[pos]) <= hi:
            raise ValueError(f"{value!r}: {fields[pos]} is out of range {lo}-{hi}")


# ---- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """A loaded project: its folder, its config and its syncs by name."""

    root: Path
    config: ProjectConfig
    syncs: dict[str, SyncSpec]

    @property
    def state_path(self) -> Path:
        return self.root / self.config.state.path

    def sync(self, name: str) -> SyncSpec:
        """Return the sync called ``name``, or raise ConfigError listing the known ones."""
        if name not in self.syncs:
            known = ", ".join(sorted(self.syncs)) or "none"
            raise ConfigError(
                [Problem(f"syncs/{name}.yaml", "name", f"no sync called {name!r}; known: {known}")]
            )
        return self.syncs[name]

    def pinned(self, name: str) -> dict[str, Any]:
        """Return the sync called ``name`` and the project config as JSON, as they were validated:
        Plan stores this with a run, so its deliveries work to the spec the run was planned with
        (a deploy in the middle of a run changes nothing of it) and never read YAML."""
        return {
            "config": self.config.model_dump(mode="json", by_alias=True, exclude_unset=True),
            "sync": self.sync(name).model_dump(mode="json", by_alias=True, exclude_unset=True),
        }

    @classmethod
    def from_pinned(cls, root: Path, document: dict[str, Any]) -> Project:
        """Return the one-sync project ``pinned`` stored (``root`` is where its files would be)."""
        sync = SyncSpec.model_validate(document["sync"])
        return cls(
            root=root, config=ProjectConfig.model_validate(document["config"]), syncs={sync.name: sync}
        )


_ACROSS = re.compile(r"^(model|mapping(?:\.[^:\s]+)?|mode|guards|destination(?:\.\w+)*): (.*)$", re.S)
_BRANCHES = {*REGISTRY, "duckdb", "snowflake"}
_HINTS = {
    "extra_forbidden": "unknown field; remove it or check its spelling",
    "missing": "required; add it",
}


def _problems(file: str, error: ValidationError, model: type[BaseModel]) -> list[Problem]:
    out = []
    for item in error.errors():
        # drop the union branch names pydantic puts in the location (a type name, "literal[...]")
        loc = [str(p) for p in item["loc"] if "[" not in str(p) and str(p) not in _BRANCHES]
        where = ".".join(loc) or "(top level)"
        message = _HINTS.get(item["type"], item["msg"].removeprefix("Value error, "))
        # a check across fields names its field first: "guards: mirror mode deletes records..."
        across = _ACROSS.match(message)
        if across and (not loc or across.group(1).split(".")[0] == loc[0]):
            where, message = across.group(1), across.group(2)
        if item["type"] == "string_pattern_mismatch" and item.get("ctx", {}).get("pattern") == URL_PATTERN:
            message = "must be an http:// or https:// address, e.g. https://hooks.example.com/syncback"
        if item["type"] == "string_pattern_mismatch" and loc[-1:] == ["name"]:
            message = "use lower-case letters, digits and _, starting with a letter, e.g. contacts_to_hubspot"
        if item["type"] == "literal_error" and "transform" in loc:
            given = item.get("input")
            if not isinstance(given, str):
                continue  # the one-name branch of "a name or a list": the list's own error says which
            message = f"{given!r} is not a transform; use one of: {', '.join(TRANSFORMS)}"
            where = ".".join(p for p in loc if not p.isdigit())
        if item["type"] == "extra_forbidden":
            branch = next((str(p) for p in item["loc"] if str(p) in REGISTRY), None)
            message += f" (allowed: {', '.join(_allowed(model, loc[:-1], branch))})"
        out.append(Problem(file, where, message))
    # one problem per field is enough: union branches repeat themselves
    return list({p.field: p for p in reversed(out)}.values())[::-1]


def _allowed(model: type[BaseModel], path: list[str], branch: str | None = None) -> list[str]:
    """Return the fields allowed at ``path``; ``branch``: the destination type the spec names."""
    current: Any = model
    for part in path:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return _names(current)
        if part == "destination" and branch in REGISTRY:
            current = REGISTRY[str(branch)].config
        else:
            current = _model_of(info.annotation)
    return _names(current)


def _model_of(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _names(model: Any) -> list[str]:
    fields = getattr(model, "model_fields", {})
    return sorted(info.alias or name for name, info in fields.items())


@functools.cache
def _yaml_loader() -> Any:
    """Return a YAML loader that refuses a key written twice in one mapping (plain YAML keeps the
    last); PyYAML is imported here, so what only reads a pinned spec never loads it."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is written twice in one mapping; keep one", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _read_yaml(path: Path, rel: str) -> tuple[Any, list[Problem]]:
    import yaml

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())  # a SafeLoader underneath
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        return None, [Problem(rel, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
    if not isinstance(data, dict):
        return None, [Problem(rel, "(top level)", "must be a mapping of field: value")]
    return data, []


def load_project(root: Path | str) -> Project:
    """Read ``syncback.yaml`` and every ``syncs/*.yaml`` under ``root``; raise ConfigError on any problem."""
    root = Path(root)
    problems: list[Problem] = []
    config: ProjectConfig | None = None
    config_file = root / "syncback.yaml"
    if not config_file.exists():
        raise ConfigError(
            [Problem(str(config_file), "(file)", "missing; create it (see README: project config)")]
        )
    data, found = _read_yaml(config_file, "syncback.yaml")
    problems += found
    if data is not None:
        try:
            config = ProjectConfig.model_validate(data)
        except ValidationError as exc:
            problems += _problems("syncback.yaml", exc, ProjectConfig)

    syncs: dict[str, SyncSpec] = {}
    for path in sorted((root / "syncs").glob("*.y*ml")):
        rel = f"syncs/{path.name}"
        data, found = _read_yaml(path, rel)
        problems += found
        if data is None:
            continue
        warehouse = data.get("warehouse")
        if config is not None and isinstance(warehouse, str) and warehouse not in config.warehouses:
            known = ", ".join(sorted(config.warehouses))
            problems.append(
                Problem(rel, "warehouse", f"{warehouse!r} is not in syncback.yaml; known: {known}")
            )
        try:
            sync = SyncSpec.model_validate(data)
        except ValidationError as exc:
            problems += _problems(rel, exc, SyncSpec)
            continue
        if sync.name != path.stem:
            problems.append(Problem(rel, "name", f"{sync.name!r} differs from the file name; rename one"))
        if sync.name in syncs:
            problems.append(Problem(rel, "name", f"{sync.name!r} is used by another sync file"))
        syncs[sync.name] = sync
    if problems or config is None:
        raise ConfigError(problems)
    return Project(root=root, config=config, syncs=syncs)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schemas for editor completion, by file name."""
    sync = SyncSpec.model_json_schema(by_alias=True)
    sync["title"] = "syncback sync spec (syncs/*.yaml)"
    entry = sync["properties"]["mapping"]["additionalProperties"]
    sync["properties"]["mapping"]["additionalProperties"] = {
        "anyOf": [{"type": "string", "description": "a model column, sent as it is"}, entry]
    }
    project = ProjectConfig.model_json_schema(by_alias=True)
    project["title"] = "syncback project config (syncback.yaml)"
    return {"sync.schema.json": sync, "syncback.schema.json": project}
