"""The sweep file's ``runtime_env:``: Ray's own schema (``working_dir``, ``py_modules``, ``pip``, ``env_vars``, ...),
handed to ``ray.init`` so that the user's code reaches every worker (DESIGN.md §4).

Local paths in it are relative to the sweep file; ``resolve_runtime_env`` makes them absolute, so the driver can be
started from any directory and ``resume`` (which reparses the stored file) finds the same folders. ``importable``
puts the user's folders on the driver's ``sys.path``, so that validation imports the user's factories as the
workers will.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from search_spaces.schema import SpecError

PATH_KEYS = ("working_dir", "py_modules")  # keys whose entries are local folders or files (or remote URIs)
FILE_KEYS = ("pip", "conda")  # a requirements.txt / environment.yaml path in place of the list


def _is_uri(value: str) -> bool:
    return "://" in value


def resolve_runtime_env(env: dict[str, Any], base: Path, file: str) -> dict[str, Any]:
    """``env`` with its local paths absolute (relative ones from ``base``); a missing folder is a ``SpecError``."""
    out = dict(env)
    if isinstance(env.get("working_dir"), str) and not _is_uri(env["working_dir"]):
        out["working_dir"] = _existing(env["working_dir"], base, file, "runtime_env.working_dir")
    elif "working_dir" in env and not isinstance(env["working_dir"], str):
        raise SpecError(file, "runtime_env.working_dir", f"expected a folder (or a URI), got {env['working_dir']!r}")
    if "py_modules" in env:
        if not isinstance(env["py_modules"], list):
            raise SpecError(
                file, "runtime_env.py_modules", f"expected a list of folders, files or URIs, got {env['py_modules']!r}"
            )
        out["py_modules"] = [
            m if not isinstance(m, str) or _is_uri(m) else _existing(m, base, file, f"runtime_env.py_modules[{i}]")
            for i, m in enumerate(env["py_modules"])
        ]
    for key in FILE_KEYS:
        if isinstance(env.get(key), str) and not _is_uri(env[key]):
            out[key] = _existing(env[key], base, file, f"runtime_env.{key}")
    return out


def _existing(path: str, base: Path, file: str, where: str) -> str:
    resolved = (base / Path(path).expanduser()).resolve()
    if not resolved.exists():
        raise SpecError(
            file, where, f"{path!r} (relative to the sweep file's folder {base}) does not exist: {resolved}"
        )
    return str(resolved)


def import_roots(env: dict[str, Any]) -> list[str]:
    """The folders from which the workers import the user's code: ``working_dir``, and each local ``py_modules``
    entry's parent (a package folder ``mypkg/`` is imported as ``mypkg``)."""
    roots = []
    if isinstance(env.get("working_dir"), str) and not _is_uri(env["working_dir"]):
        roots.append(env["working_dir"])
    for module in env.get("py_modules") or []:
        if isinstance(module, str) and not _is_uri(module) and not module.endswith(".whl"):
            roots.append(str(Path(module).parent))
    return roots


def importable(env: dict[str, Any]) -> None:
    """The user's folders on this process's ``sys.path`` (first, once each)."""
    for root in reversed(import_roots(env)):
        if root not in sys.path:
            sys.path.insert(0, root)
