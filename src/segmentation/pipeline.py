"""The pipeline as ``dvc.yaml`` declares it: its paths (``vars: paths``) and its stages, ``${...}`` resolved. A plain
YAML read, not DVC's parser (~0.8 s to import), resolving what this project uses as DVC does (tests/test_paths.py)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import yaml

from segmentation.errors import UserError

DVC_YAML = "dvc.yaml"
PARAMS_FILE = "params.yaml"  # DVC reads it for ${...} too, as its default params file
_REFERENCE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
# libyaml's parser when PyYAML has it: the same values, ~8x faster on dvc.lock (every stage reads it).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, with libyaml's parser when PyYAML has it."""
    return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: SafeLoader or its C twin


def definition(root: str | Path = ".") -> dict[str, Any]:
    """``dvc.yaml`` as written (``${...}`` not resolved); a missing or broken file is a :class:`UserError`."""
    path = Path(root) / DVC_YAML
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read the pipeline's definition ({exc.strerror}); run from the project"
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise UserError(f"{path}: no stages: section")
    return data


def variables(root: str | Path = ".", data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``${...}`` can name, as for DVC: ``params.yaml`` (when present), then the mappings under ``vars``."""
    data = definition(root) if data is None else data
    context: dict[str, Any] = {}
    # A broken params file is reported by the stages themselves; here only the paths matter.
    with contextlib.suppress(OSError, yaml.YAMLError):
        context.update(load_yaml((Path(root) / PARAMS_FILE).read_text(encoding="utf-8")) or {})
    for item in data.get("vars") or []:
        if isinstance(item, dict):  # a file name in vars (another params file) is not used by this project
            context.update(item)
    return context


def resolve(value: Any, context: dict[str, Any]) -> Any:
    """``value`` with each ``${name.sub}`` replaced from ``context`` (keys, lists, strings); unknown ones left as is."""

    def lookup(match: re.Match) -> str:
        found: Any = context
        for part in match.group(1).split("."):
            if not isinstance(found, dict) or part not in found:
                return match.group(0)
            found = found[part]
        return str(found)

    if isinstance(value, dict):
        return {resolve(k, context): resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    if isinstance(value, str):
        return _REFERENCE.sub(lookup, value)
    return value


def stages(root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """Stage name -> its definition (cmd, deps, outs, metrics, plots), ``${...}`` resolved."""
    data = definition(root)
    return resolve(data["stages"], variables(root, data))


def paths(root: str | Path = ".") -> dict[str, str]:
    """The pipeline's named paths (``vars: - paths:`` in ``dvc.yaml``), relative to the project."""
    for item in definition(root).get("vars") or []:
        if isinstance(item, dict) and isinstance(item.get("paths"), dict):
            return {str(k): str(v) for k, v in item["paths"].items()}
    return {}


def path(name: str, root: str | Path = ".") -> str:
    """One named path, e.g. ``path("segmenter")``; a :class:`UserError` when ``dvc.yaml`` does not declare it."""
    if name not in (found := paths(root)):
        raise UserError(f"{Path(root) / DVC_YAML}: vars: paths: has no {name}: (the pipeline's path for it)")
    return found[name]
