"""``package.module:attr`` import paths: the one resolver behind a user's own models, datasets and activations
(DESIGN.md §3, §4, §2), so each names a missing module or attribute the same way, with the closest names."""

from __future__ import annotations

import difflib
import importlib


def is_import_path(name: str) -> bool:
    return ":" in name


def short_name(name: str) -> str:
    """A name for display: an import path as its module's last part and its attribute (``mypkg.nets:build`` →
    ``nets.build``); a registry or timm name as it is."""
    if not is_import_path(name):
        return name
    module, _, attr = name.partition(":")
    return f"{module.rpartition('.')[2]}.{attr}"


def import_object(path: str, what: str):
    """The object ``path`` names; a ``ValueError`` ``"<what> 'path': …"`` naming the missing module or attribute.

    ``what`` says what the path should name (``model``, ``dataset``, ``activation``): the messages start with it."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {path!r}: an import path is package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {path!r}: cannot import module {module_name!r} ({err}); is it installed, or shipped "
            "to the workers by the sweep file's runtime_env?"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it has: {', '.join(sorted(public)[:20])}"
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj
