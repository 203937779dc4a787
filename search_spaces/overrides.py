"""``--set KEY=VALUE`` overrides of a sweep file (dotted keys of the file, values parsed as YAML), as Hydra and
OmegaConf users write them: ``lslu-sweep run quickstart --set trial.epochs=2 --set search.num_samples=4``.

They are applied to the file's mapping before validation, so an override is checked like the file itself (an unknown
key or a wrong type names its key path), and the sweep's recorded ``sweep.yaml`` is the file as overridden (what
``lslu-sweep resume`` and ``best_config.yaml`` start from), headed by the overrides it was given."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import yaml

from search_spaces.schema import SpecError, SpecErrors


def apply_overrides(data: Any, overrides: Sequence[str], file: str) -> dict:
    """A new mapping: ``data`` with each ``KEY=VALUE`` set (intermediate mappings created where missing)."""
    if not isinstance(data, dict):
        return data  # parse_sweep reports what the file should be
    merged = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(
                file,
                "--set",
                f"expected KEY=VALUE with a dotted KEY of the sweep file (e.g. trial.epochs=2), got {item!r}",
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(file, key, f"--set value {text!r} is not valid YAML: {exc}") from None
        node = merged
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(
                    file, key, f"--set cannot set a key inside {where}, which holds {node!r}, not a mapping"
                )
        node[parts[-1]] = value
    return merged


def overridden_source(source: str, data: dict, overrides: Sequence[str]) -> str:
    """The text recorded as the sweep's ``sweep.yaml``: the file itself, or, overridden, the merged mapping headed by
    the overrides (comments of the original do not survive a YAML round trip)."""
    if not overrides:
        return source
    header = "".join(f"# --set {item}\n" for item in overrides)
    return header + yaml.safe_dump(data, sort_keys=False)


def blame_overrides(exc: SpecError, overrides: Sequence[str]) -> SpecError:
    """``exc`` with each error at a key an override set (or below it) saying so: the file does not hold that value."""
    keys = {item.partition("=")[0].strip(): item for item in overrides}

    def blamed(err: SpecError) -> SpecError:
        item = next((v for k, v in keys.items() if err.key == k or err.key.startswith((f"{k}.", f"{k}["))), None)
        return err if item is None else SpecError(err.file, err.key, f"{err.message} (set by --set {item})")

    errors = [blamed(e) for e in getattr(exc, "errors", [exc])]
    return errors[0] if len(errors) == 1 else SpecErrors(errors)
