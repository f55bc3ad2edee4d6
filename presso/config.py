"""Experiment files: schema, validation, and errors that name the file, field and line.

An experiment file is YAML. Every mistake — an unknown key, a wrong type, a budget no
configuration can meet, a model or corpus that does not exist — is reported as one line
``FILE:LINE: FIELD: what is wrong; how to fix it`` before any work starts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from presso.errors import PressoError, shown
from presso.schema import MAX_SEED, MAX_WINDOWS, Strict
from presso.spaces import BUDGET_METRICS, KINDS

SCHEMA_VERSION = 1
#: Most bytes of an experiment file, and most nodes and nesting in it, aliases expanded: a
#: YAML alias bomb of a kilobyte expands to billions of nodes.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


class DataConfig(Strict):
    corpus: str = Field(
        "bible",
        max_length=4096,
        description="a built-in corpus (bible, speeches, reviews, pydoc) or a path",
    )
    text_field: str = "text"
    seq_len: int = Field(256, ge=8, le=8192)
    calibration: int = Field(
        32, ge=1, le=MAX_WINDOWS, description="calibration windows in the pool"
    )
    evaluation: int = Field(
        8, ge=1, le=MAX_WINDOWS, description="held-out windows, never in the calibration pool"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)


class _Space(Strict):
    """The ``space:`` section; its fields are built from the kinds (see :data:`SpaceConfig`)."""

    def kinds(self) -> list[str]:
        """The kinds of dimension this space has: its own kind, or every budgeted one (joint)."""
        if self.kind != "joint":
            return [self.kind]
        return [k.name for k in KINDS.values() if getattr(self, k.budget) is not None]

    def latency_budget(self) -> str | None:
        """The latency budget field set (``speedup``, ``latency_ratio``, ``max_latency_ms``)."""
        return next(
            (f for f in ("speedup", "latency_ratio", "max_latency_ms") if getattr(self, f)), None
        )

    def missing_budget(self) -> str | None:
        """The budget field a kind needs but lacks, if any. A single kind's own budget may be
        left out under a latency budget: the measured latency is then what binds."""
        if self.kind == "joint":
            budgets = ", ".join(k.budget for k in KINDS.values())
            return None if len(self.kinds()) >= 2 else f"two of {budgets}"
        field = KINDS.get(self.kind).budget
        if getattr(self, field) is None and self.latency_budget() is None:
            return f"{field} (or a latency budget: speedup, latency_ratio or max_latency_ms)"
        return None


#: The ``space:`` section: its kind (one of the kinds, or ``joint``), each kind's budget and
#: options, then the budgets on the whole model.
SpaceConfig = create_model(
    "SpaceConfig",
    __base__=_Space,
    kind=(Literal[(*KINDS.available(), "joint")], KINDS.available()[0]),
    **{name: spec for k in KINDS.values() for name, spec in k.space_fields.items()},
    max_params=(
        float | None,
        Field(None, gt=0, description="nonzero weights left in the compressible layers, at most"),
    ),
    max_size_mb=(
        float | None,
        Field(None, gt=0, description="MB of the compressible layers' packed weights, at most"),
    ),
    max_latency_ms=(
        float | None,
        Field(
            None, gt=0, description="predicted end-to-end latency on hardware.backend, ms, at most"
        ),
    ),
    latency_ratio=(
        float | None,
        Field(
            None,
            gt=0,
            le=1,
            description="predicted latency at most this fraction of the dense model's",
        ),
    ),
    speedup=(
        float | None,
        Field(
            None,
            ge=1,
            description="measured speedup over the dense model on hardware.backend, at least "
            "(predicted latency at most dense / speedup; the winners are timed end to end)",
        ),
    ),
)


class WorkloadConfig(Strict):
    batch: int = Field(1, ge=1, le=4096)
    seq_len: int = Field(
        128, ge=1, le=1 << 20, description="tokens per sequence (prefill) or KV length (decode)"
    )
    phase: Literal["prefill", "decode"] = "prefill"


class HardwareConfig(Strict):
    """Where latency is measured: every candidate gets a predicted ``latency_ms`` from a cost
    model fitted to this machine's measurements (profiled once, kept in the profile database)."""

    backend: str = Field("torch", description="a profiler backend: torch, onnxruntime, tvm, triton")
    device: str = "cpu"
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig)
    threads: int = Field(1, ge=1, le=4096, description="threads the backend may use when measuring")
    cost_model: Literal["lookup", "learned"] = "lookup"
    repeats: int = Field(25, ge=3, le=10_000)
    profile_db: str | None = Field(None, description="profile database (default: in the cache)")


class SensitivityConfig(Strict):
    """The per-unit sensitivity table (``presso.sensitivity``) that dp and EvoPress use."""

    tokens: int = Field(
        256, ge=1, le=10**7, description="calibration tokens each entry is scored on"
    )
    measure: Literal["lowest", "all"] = Field(
        "lowest",
        description="lowest: score each unit at its lowest level and place the others by its "
        "relative output error; all: score every level",
    )


class SearchConfig(Strict):
    strategy: str = "evopress"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    options: dict[str, Any] = Field(default_factory=dict)
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)


class RunnerConfig(Strict):
    kind: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1, le=4096, description="Ray actors (ray runner)")
    address: str | None = Field(
        None, description="an existing Ray cluster's address; null starts a local one"
    )
    threads: int | None = Field(
        None, ge=1, le=4096, description="torch threads per evaluator (default: cores / workers)"
    )


class EvaluationConfig(Strict):
    batch_size: int = Field(4, ge=1, le=4096)
    cache_mb: int = Field(
        1024, ge=0, le=1 << 24, description="memory for reused block outputs; 0 disables reuse"
    )


class _Experiment(Strict):
    """An experiment file; its fields are built from the kinds (see :data:`Experiment`)."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


#: An experiment file: the model and data, each kind's section (``compress:`` for bits,
#: ``sparsity:``...), the space, objectives, search, baselines, runner, hardware and store.
Experiment = create_model(
    "Experiment",
    __base__=_Experiment,
    version=(int, SCHEMA_VERSION),
    name=(
        str | None,
        Field(
            None, min_length=1, max_length=200, description="the run's name (default: the file's)"
        ),
    ),
    model=(str, Field(max_length=4096)),
    data=(DataConfig, Field(default_factory=DataConfig)),
    **{k.section: (k.config, Field(default_factory=k.config)) for k in KINDS.values() if k.section},
    space=(SpaceConfig, ...),
    objectives=(
        list[str],
        Field(
            default_factory=list,
            description="metrics the Pareto front is over (default: kl and each budget's metric)",
        ),
    ),
    search=(SearchConfig, Field(default_factory=SearchConfig)),
    baselines=(list[str], Field(default_factory=lambda: ["uniform"])),
    runner=(RunnerConfig, Field(default_factory=RunnerConfig)),
    hardware=(
        HardwareConfig | None,
        Field(None, description="backend, device and workload latency is measured for"),
    ),
    evaluation=(EvaluationConfig, Field(default_factory=EvaluationConfig)),
    store=(
        str,
        Field(
            "runs/presso.db", max_length=4096, description="an SQLite path or any SQLAlchemy URL"
        ),
    ),
)


# ---------------------------------------------------------------------------- loading


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file; raises PressoError with file, line and fix."""
    path = Path(path)
    raw, lines = read_yaml(path)
    return validate_experiment(raw, path, lines, default_name=path.stem)


def read_yaml(
    path: Path, *, noun: str = "experiment file"
) -> tuple[dict[str, Any], dict[tuple, int]]:
    """A YAML mapping file (size-, depth- and duplicate-key-checked) and the line of each key
    path in it; raises PressoError with file, line and what is wrong."""
    text = _read_text(path, noun)
    try:
        _check_size(path, text, noun)
        node = yaml.compose(text)
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text[: err.position].count("\n") + 1
            char = err.character if isinstance(err.character, int) else ord(err.character)
            problem = f"character {char:#x} is not allowed ({err.reason})"
        else:
            line = mark.line + 1 if mark else None
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f"{path}:{line}" if line else str(path)
        raise PressoError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise PressoError(f"{path}: {_a(noun)} is a YAML mapping (key: value lines)")
    return raw, _line_index(node)


def validate_experiment(
    raw: dict[str, Any], path: Path, lines: dict[tuple, int], *, default_name: str
) -> Experiment:
    """An experiment from its parsed mapping; errors name ``path`` and the line ``lines`` gives
    each key path (a sweep passes its own file and the lines of the fields it sets)."""
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise PressoError(_describe(path, lines, first)) from None
    if exp.version != SCHEMA_VERSION:
        raise PressoError(
            f"{path}:{lines.get(('version',), 1)}: version: only version {SCHEMA_VERSION} is known"
        )
    if exp.name is None:
        exp = exp.model_copy(update={"name": default_name})
    _check_semantics(path, lines, exp)
    options = _check_strategy(path, lines, exp.search.strategy, exp.search.options, ("search",))
    for i, name in enumerate(exp.baselines):
        _check_strategy(path, lines, name, {}, ("baselines", i))
    return exp.model_copy(update={"search": exp.search.model_copy(update={"options": options})})


def experiment_from_dict(raw: dict[str, Any], *, name: str = "run") -> Experiment:
    """Validate an experiment given as a dict (what an experiment file holds, e.g. built in a
    notebook), with the checks a file gets; errors name the field (``<dict>: space.kind: ...``).
    ``name``: the run's name when the dict gives none."""
    if not isinstance(raw, dict):
        raise PressoError("an experiment is a mapping (key: value), as in an experiment file")
    return validate_experiment(raw, Path("<dict>"), {}, default_name=name)


def _read_text(path: Path, noun: str) -> str:
    """The file's text: UTF-8, at most MAX_FILE_BYTES."""
    try:
        if not path.is_file():
            raise PressoError(f"{path}: no such {noun}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PressoError(
                f"{path}: {path.stat().st_size} bytes; {_a(noun)} is at most "
                f"{MAX_FILE_BYTES} bytes (a few lines of YAML)"
            )
        data = path.read_bytes()
    except OSError as err:
        raise PressoError(f"{path}: cannot read the {noun}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PressoError(
            f"{path}:{line}: not UTF-8 text (byte {err.start}); {_a(noun)} is YAML saved as UTF-8"
        ) from None


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _check_size(path: Path, text: str, noun: str) -> None:
    """Refuse, from the parser's events and before anything is composed, a file whose nodes,
    aliases expanded, number over MAX_NODES or nest deeper than MAX_DEPTH: composing and
    walking an alias bomb takes gigabytes, and the composer recurses once per level."""
    expanded: dict[str, int] = {}  # anchor -> nodes under it, aliases expanded
    stack: list[tuple[str | None, int]] = []  # open collections: anchor, nodes seen before
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            total += expanded.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor:
                expanded[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            stack.append((event.anchor, total))
            total += 1
            if len(stack) > MAX_DEPTH:
                raise PressoError(
                    f"{path}:{event.start_mark.line + 1}: nested over {MAX_DEPTH} levels deep; "
                    f"{_a(noun)} needs a few"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = stack.pop()
            if anchor:
                expanded[anchor] = total - before
        if total > MAX_NODES:
            raise PressoError(
                f"{path}:{event.start_mark.line + 1}: over {MAX_NODES} values with aliases "
                f"expanded (an alias bomb?); write the {noun} out without nested aliases"
            )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML loaders let the last one
    win silently, so a forgotten earlier line would configure the run unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may repeat
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if earlier is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (also on line {earlier}); keep one",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _line_index(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path (``("space", "mean_bits")``) to its 1-based line in the file."""
    index: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            index[path] = key.start_mark.line + 1
            index.update(_line_index(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            index[prefix + (i,)] = value.start_mark.line + 1
            index.update(_line_index(value, prefix + (i,)))
    return index


def _where(path: Path, lines: dict[tuple, int], loc: tuple) -> str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}"
    return str(path)


def _describe(path: Path, lines: dict[tuple, int], error: dict) -> str:
    loc = tuple(error["loc"])
    field = ".".join(str(p) for p in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else ""
        fix = f"remove it or fix its spelling; allowed here: {allowed}"
        return f"{_where(path, lines, loc)}: {field}: unknown key; {fix}"
    if kind == "missing":
        model = _model_at(loc[:-1])
        info = model.model_fields.get(str(loc[-1])) if model else None
        hint = f" ({info.description})" if info and info.description else ""
        return f"{_where(path, lines, loc[:-1])}: {field}: required{hint}; add it"
    msg = error["msg"]
    return f"{_where(path, lines, loc)}: {field}: {msg} (got {shown(error.get('input'))})"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Experiment
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


#: What a Pareto front can be over: the accuracy proxies on calibration data, then what the
#: space's budgets and reports measure (which of them a run has depends on its space).
OBJECTIVES = ("kl", "ppl", "cos_dist", "fid", "kid", *BUDGET_METRICS)


def _check_semantics(path: Path, lines: dict[tuple, int], exp: Experiment) -> None:
    """Checks that need more than types: budget, names that must exist."""
    from presso.diffusion import BUILTIN_DIFFUSION, is_diffusion_model
    from presso.models import BUILTIN_MODELS

    def fail(loc: tuple, message: str) -> None:
        raise PressoError(f"{_where(path, lines, loc)}: {'.'.join(map(str, loc))}: {message}")

    missing = exp.space.missing_budget()
    if missing:
        fail(("space",), f"a {exp.space.kind} space needs {missing}; add it under space:")
    kinds = exp.space.kinds()
    for kind in KINDS.values():
        budgeted = getattr(exp.space, kind.budget, None) is not None
        kind.check(exp, fail, kind.name in kinds and budgeted)
    builtin = [*BUILTIN_MODELS, *BUILTIN_DIFFUSION]
    if exp.model not in builtin and not _exists(_resolve(path, exp.model)):
        fail(
            ("model",),
            f"{shown(exp.model)} is not a built-in model ({', '.join(builtin)}) "
            "and no such file or folder exists; give a built-in name or a local path",
        )
    diffusion = exp.model in BUILTIN_DIFFUSION or is_diffusion_model(str(_resolve(path, exp.model)))
    schedule = "steps" in kinds and set(kinds) <= {"steps", "skips"}
    if diffusion != schedule:
        fail(
            ("space", "kind"),
            "a diffusion model's space is kind: steps (its sampling time steps), or kind: "
            "joint with steps and blocks (and the UNet blocks skipped per step)"
            if diffusion
            else f"kind: {'/'.join(kinds)} needs a diffusion model ({', '.join(BUILTIN_DIFFUSION)} or a "
            "diffusers folder with unet/ and scheduler/); "
            f"{shown(exp.model)} is not one",
        )
    from presso.data import BUILTIN_CORPORA

    if diffusion:
        pass  # the real images are the digits (presso.diffusion); no corpus is read
    elif exp.data.corpus not in BUILTIN_CORPORA and not _exists(_resolve(path, exp.data.corpus)):
        fail(
            ("data", "corpus"),
            f"{shown(exp.data.corpus)} is not a built-in corpus "
            f"({', '.join(BUILTIN_CORPORA)}) and no such file or folder exists",
        )
    if (field := exp.space.latency_budget()) and exp.hardware is None:
        fail(
            ("space", field),
            "a latency budget needs a hardware: section saying where latency is measured "
            "(backend, workload); add one",
        )
    if diffusion and exp.hardware is not None and exp.hardware.backend != "torch":
        fail(
            ("hardware", "backend"),
            f"a diffusion model's sampling is timed on the torch backend only, not "
            f"{shown(exp.hardware.backend)}; give backend: torch",
        )
    if exp.hardware is not None:
        from presso.profilers import available

        if exp.hardware.backend not in available():
            fail(
                ("hardware", "backend"),
                f"unknown backend {shown(exp.hardware.backend)}; available: {', '.join(available())}",
            )
    from presso.evaluation import Objective

    for i, name in enumerate(exp.objectives):
        if Objective.parse(name).metric not in OBJECTIVES:
            fail(
                ("objectives", i),
                f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)} "
                "(a leading - maximises)",
            )
    if "latency_ms" in exp.objectives and exp.hardware is None:
        fail(("objectives",), "latency_ms needs a hardware: section (backend, workload); add one")


def _check_strategy(
    path: Path, lines: dict[tuple, int], name: str, options: dict, loc: tuple
) -> dict[str, Any]:
    """The strategy's options checked (and converted as its constructor takes them)."""
    from presso import search

    if name not in search.available():
        where = loc + ("strategy",) if loc == ("search",) else loc
        raise PressoError(
            f"{_where(path, lines, where)}: {'.'.join(map(str, where))}: unknown strategy {shown(name)}; "
            f"available: {', '.join(search.available())}"
        )
    try:
        return search.strategy_class(name).check_options(options)
    except search.OptionError as err:
        where = loc + ("options", *err.loc)
        field = ".".join(map(str, where))
        raise PressoError(f"{_where(path, lines, where)}: {field}: {err.message}") from None


def _resolve(experiment_file: Path, value: str) -> Path:
    """Paths in an experiment file are relative to the folder the file is in."""
    p = Path(value)
    with contextlib.suppress(RuntimeError):  # ~user of no such user: taken as written
        p = p.expanduser()
    return p if p.is_absolute() else (experiment_file.parent / p)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a name the system refuses (too long, a NUL byte) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_paths(experiment_file: Path, exp: Experiment) -> Experiment:
    """Experiment with model and corpus paths made absolute (built-in names kept)."""
    from presso.data import BUILTIN_CORPORA
    from presso.diffusion import BUILTIN_DIFFUSION
    from presso.models import BUILTIN_MODELS

    updates: dict[str, Any] = {}
    if exp.model not in BUILTIN_MODELS and exp.model not in BUILTIN_DIFFUSION:
        updates["model"] = str(_resolve(experiment_file, exp.model).resolve())
    if exp.data.corpus not in BUILTIN_CORPORA:
        data = exp.data.model_copy(
            update={"corpus": str(_resolve(experiment_file, exp.data.corpus).resolve())}
        )
        updates["data"] = data
    return exp.model_copy(update=updates)
