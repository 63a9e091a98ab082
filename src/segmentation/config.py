"""Typed, validated params: one model per ``params.yaml`` section (params.yaml documents each knob); ``train`` and
``preprocess`` add a sub-section per entry of the registries of algorithms and recipes."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from segmentation.core.data import ROW_ID_COLUMN as ROW_ID_COLUMN  # re-exported: the stages read it here
from segmentation.errors import UserError
from segmentation.pipeline import PARAMS_FILE as PARAMS_FILE  # re-exported: the stages read it here
from segmentation.pipeline import load_yaml


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SEED_MAX = 2**32 - 1  # scikit-learn and numpy take seeds in [0, 2**32 - 1]


class DataParams(_Params):
    """Where the raw CSV is and how to read it."""

    path: str
    separator: str = Field(min_length=1)
    encoding: str = "utf-8"
    id_column: str | None = None  # null: a row_id column is generated (1 = the first data row)
    format: Literal["auto", "csv", "parquet"] = "auto"
    files: str | None = Field(default=None, min_length=1)  # engine dask: a glob inside the folder path (it checks it)
    bad_rows: Literal["error", "skip"] = "error"  # rows with another field count than the header's


class CategoricalParams(_Params):
    """Non-numeric columns: ``onehot`` in the model matrix, or ``drop`` (only profiled per cluster)."""

    columns: list[str] = Field(default_factory=list)
    encoding: Literal["onehot", "drop"] = "onehot"
    max_categories: int = Field(default=50, ge=2)


class Bounds(_Params):
    """Inclusive range of plausible values; rows outside it are outliers."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class DaskSection(_Params):
    """``preprocess.dask``, its defaults filled in (logged with the section); engines/dask/params.py checks it."""

    blocksize: str | int = "64MiB"
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    connect_timeout: float = 30
    tables: str | None = None


def beyond_local(path: str, fmt: str) -> bool:
    """Whether ``path`` (``fmt``) is input only the Dask engine reads: Parquet, a glob (not a file's name), a URL."""
    return (
        fmt == "parquet"
        or "://" in path
        or (any(c in path for c in "*?[") and not Path(path).is_file())
        or path.endswith((".parquet", ".parq", ".pq"))
    )


class _PreprocessBase(_Params):
    """``preprocess`` section; :data:`PreprocessParams` adds each recipe's section ``preprocess.<name>``."""

    data: DataParams
    recipe: str | None = None
    features: list[str] = Field(min_length=1)
    categorical: CategoricalParams = Field(default_factory=CategoricalParams)
    missing: Literal["drop", "median"] = "drop"
    outliers: dict[str, Bounds] = Field(default_factory=dict)
    scale: bool = True
    pca_components: int | None = Field(default=None, ge=1)
    engine: Literal["local", "dask"] = "local"
    dask: DaskSection = Field(default_factory=DaskSection)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str | None) -> str | None:
        from segmentation import recipes

        if name is not None:
            recipes.get(name)  # a ValueError naming the known ones
        return name

    @property
    def recipe_params(self) -> Any:
        """The selected recipe's own section (``preprocess.<recipe>``), None without a recipe or knobs."""
        return getattr(self, self.recipe, None) if self.recipe is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> _PreprocessBase:
        from segmentation import recipes

        if self.recipe is not None and recipes.get(self.recipe).params is not None and self.recipe_params is None:
            raise ValueError(f"recipe '{self.recipe}' needs a {self.recipe} section")
        columns = [*self.features, *self.categorical.columns]
        if dupes := sorted({f for f in columns if columns.count(f) > 1}):
            raise ValueError(f"columns listed twice in features / categorical.columns: {dupes}")
        id_column = self.data.id_column or ROW_ID_COLUMN
        if id_column in columns:
            raise ValueError(f"the ID column {id_column} cannot also be a feature or a categorical column")
        # One-hot columns add at least one column each; their exact number is known only from the data.
        width = len(self.features) + (len(self.categorical.columns) if self.categorical.encoding == "onehot" else 0)
        if self.pca_components is not None and self.pca_components > width:
            raise ValueError(f"pca_components ({self.pca_components}) exceeds the number of features ({width})")
        # Engine dask takes every preprocess setting (README: Scaling out); local reads one local CSV file only.
        if self.engine == "local" and (beyond_local(self.data.path, self.data.format) or self.data.files is not None):
            raise ValueError(
                f"data.path {self.data.path}: engine 'local' reads one local CSV file; a folder, a glob, Parquet or "
                "S3 storage needs engine: dask"
            )
        return self


class _TrainBase(_Params):
    """``train`` section; :data:`TrainParams` adds each algorithm's sub-section ``train.<name>``."""

    algorithm: str = Field(default_factory=lambda: importlib.import_module("segmentation.algorithms").DEFAULT)
    k_min: int = Field(ge=2)  # calinski_harabasz and silhouette are undefined for k=1
    k_max: int
    metric: Literal["distortion", "silhouette", "calinski_harabasz"] = "distortion"
    selection: Literal["elbow", "best_score"] = "elbow"
    n_init: int = Field(ge=1)
    max_iter: int = Field(default=300, ge=1)
    random_state: int = Field(ge=0, le=SEED_MAX)
    # Fixed for reproducibility: the final fit's result can differ with the thread count (scikit-learn #27518).
    n_threads: int = Field(ge=1)
    min_cluster_size: int = Field(default=10, ge=2)
    search_sample_size: int | None = Field(default=None, ge=2)
    k: int | None = Field(default=None, ge=2)

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, name: str) -> str:
        from segmentation.algorithms import REGISTRY

        if name not in REGISTRY:
            raise ValueError(f"unknown algorithm {name!r}; one of: {', '.join(REGISTRY)}")
        return name

    @property
    def algorithm_params(self) -> Any:
        """The chosen algorithm's own sub-section (``train.<algorithm>``)."""
        return getattr(self, self.algorithm)

    @property
    def k_top(self) -> tuple[int, str]:
        """The largest k fitted and the param that sets it (``k_max``, or ``k`` above it)."""
        return (self.k, "k") if self.k is not None and self.k > self.k_max else (self.k_max, "k_max")

    @model_validator(mode="after")
    def _k_range(self) -> _TrainBase:
        from segmentation.algorithms import REGISTRY

        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must not be below k_min ({self.k_min})")
        top, name = self.k_top
        if self.search_sample_size is not None and self.search_sample_size < top * self.min_cluster_size:
            raise ValueError(
                f"search_sample_size ({self.search_sample_size}) must be at least {name} x min_cluster_size "
                f"({top * self.min_cluster_size})"
            )
        if self.selection == "best_score" and self.metric == "distortion":
            raise ValueError("selection 'best_score' needs metric silhouette or calinski_harabasz")
        if self.k is not None and REGISTRY[self.algorithm].criterion(self) is None:
            raise ValueError(
                f"k: {self.algorithm} finds the number of clusters itself ({self.algorithm_params.k_setting()} in "
                f"train.{self.algorithm}); set k: null"
            )
        return self


class EvaluateParams(_Params):
    """``evaluate`` section."""

    silhouette_sample_size: int = Field(ge=2)
    plot_sample_size: int = Field(default=20000, ge=100)
    random_state: int = Field(ge=0, le=SEED_MAX)
    criteria_sample_size: int = Field(default=2000, ge=100)
    profile_columns: list[str] = Field(default_factory=list)
    # Each segment's stability (core/stability.py): bootstrap resamples (0: off) of a seeded sample of at most
    # this many rows; 20 of 5,000 take 0.5 s (3.5 s on a busy machine), whatever the rows.
    stability_resamples: int = Field(default=20, ge=0)
    stability_max_rows: int = Field(default=5000, ge=100)
    k_stability_resamples: int = Field(default=5, ge=0)  # the report's mean stability per k (0: off)
    # Readable labels of columns in the report (raw name -> label); a column not in the data is ignored: one map
    # serves several versions of the data.
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("profile_columns")
    @classmethod
    def _profile_columns(cls, names: list[str]) -> list[str]:
        if any(not name.strip() for name in names):
            raise ValueError("empty column name")
        if dupes := sorted({c for c in names if names.count(c) > 1}):
            raise ValueError(f"listed twice: {dupes}")
        return names

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if blank := sorted(c for c, text in labels.items() if not text.strip()):
            raise ValueError(f"empty label for {blank}: give one or remove the entry")
        return labels


class ScoreParams(_Params):
    """``score`` section: read by ``make score`` only (no stage: changing it reruns nothing); optional."""

    drift_threshold: float = Field(default=0.2, gt=0)  # the segment mix's population stability index that warns


# TrainParams adds each algorithm's sub-section (its defaults when left out), PreprocessParams each recipe's section
# (required when selected); built when asked for, from the registry as it is now (this module stays light).
_REGISTRIES = {"TrainParams": (_TrainBase, "algorithms"), "PreprocessParams": (_PreprocessBase, "recipes")}


@functools.cache  # built again only when the registry changed
def _with_sections(name: str, sections: tuple[tuple[str, Any], ...]) -> type[BaseModel]:
    base = _REGISTRIES[name][0]
    fields = {s: (m, Field(default_factory=m)) if base is _TrainBase else (m | None, None) for s, m in sections}
    return create_model(name, __base__=base, __module__=__name__, __doc__=base.__doc__, **fields)


def __getattr__(name: str) -> Any:
    """``TrainParams`` and ``PreprocessParams``: their base and one field per entry of their registry."""
    if name not in _REGISTRIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    entries = importlib.import_module(f"segmentation.{_REGISTRIES[name][1]}").REGISTRY.items()
    return _with_sections(name, tuple((n, e.params) for n, e in entries if e.params is not None))


# Each stage's section model, recorded as its module is imported (runner.cli(..., params_model=...)).
_SECTION_MODELS: dict[str, type[BaseModel]] = {}


def declare_section(section: str, model: type[BaseModel]) -> None:
    """Record ``model`` as the model of the params section ``section``."""
    _SECTION_MODELS[section] = model


def section_model(section: str) -> type[BaseModel] | None:
    """The model ``segmentation.stages.<section>`` declares (imported to learn it); None: read as written."""
    module = f"segmentation.stages.{section}"
    if section not in _SECTION_MODELS and section.isidentifier() and importlib.util.find_spec(module):
        importlib.import_module(module)
    model = _SECTION_MODELS.get(section)  # one built from a registry: as the registry is now
    return __getattr__(model.__name__) if model is not None and model.__name__ in _REGISTRIES else model


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read a params YAML file into a dict, with a clear error when it is missing or malformed."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_section(section: str, raw: Any, source: str = PARAMS_FILE, model: type[BaseModel] | None = None) -> Any:
    """Validate one section's dict with ``model`` (default :func:`section_model`) into one-line errors naming the
    file and the dotted parameter; a section without a model is returned as written."""
    model = model or section_model(section)
    if model is None:
        return {} if raw is None else raw
    if raw is None:
        raise UserError(f"{source}: section '{section}' is missing")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(section, exc)}") from None
    if isinstance(parsed, _PreprocessBase) and parsed.engine == "local":
        _inside_project(parsed.data.path, source)
    return parsed


def _inside_project(path: str, source: str) -> None:
    """Refuse a data path outside the project (the stages run in its root): a clone would lack the file."""
    root, file = Path.cwd().resolve(), Path(path)
    # Folders' symlinks resolved, not the file's own: DVC may link the file to a cache elsewhere.
    if not (root / file).parent.resolve().is_relative_to(root):
        raise UserError(
            f"{source}{_line(source, 'preprocess', 'data', 'path')}: preprocess.data.path: {path} is outside the "
            "project: copy the file under data/ and `dvc add` it"
        )


def _line(source: str, *keys: str) -> str:
    """``:N``, the line of the nested key ``keys`` in the YAML file ``source`` ('' if not found)."""
    try:
        node = yaml.compose(Path(source).read_text(encoding="utf-8"))
        for key in keys:
            node = next(value for name, value in node.value if name.value == key)
        return f":{node.start_mark.line + 1}"
    except (OSError, yaml.YAMLError, StopIteration, AttributeError, TypeError, ValueError):
        return ""


def load_section(section: str, path: str | Path = PARAMS_FILE) -> Any:
    """Load and validate one stage's params section (each stage reads only its own)."""
    return parse_section(section, read_params_file(path).get(section), str(path))


_MESSAGES = {"extra_forbidden": "unknown parameter", "missing": "required parameter is missing"}


def _describe(section: str, exc: ValidationError) -> str:
    """Condense pydantic's report into one line: ``train.k_max: must be ... (got 1)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (section, *err["loc"]))
        msg = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
        if err["type"] not in _MESSAGES and "input" in err and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def profile_patterns(raw: dict[str, Any], source: str = PARAMS_FILE) -> list[str]:
    """``evaluate.profile_columns`` of a whole params file, checked as the evaluate stage checks it ([]: absent)."""
    section = raw.get("evaluate")
    if not isinstance(section, dict) or section.get("profile_columns") is None:
        return []
    checked = {"silhouette_sample_size": 2, "random_state": 0, "profile_columns": section["profile_columns"]}
    return parse_section("evaluate", checked, source, EvaluateParams).profile_columns


def flatten(params: _Params | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a params model into ``{"train.k_max": 10, ...}`` with plain Python values (lists joined by commas)."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat
