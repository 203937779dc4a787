"""Every problem of a sweep file at once (DESIGN.md §6): all of pydantic's errors, each said as what was expected,
and those of each check group that ``Sweep`` runs (a group reports each bad value it finds, not only its first).

To check the rest of a file that pydantic refuses, the entries with an error are dropped and the file is validated
again. An unknown key changes nothing by going; a known key that goes falls back to its default, so its path is
*unsure*, and a check group that reads an unsure path is skipped: its verdict would be about the default, not about
the file. A group that needs another's result (the resolved trial config, the model's sites) is skipped when that one
failed; the others still run.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Sequence

from pydantic import ValidationError

from search_spaces.schema import (
    CategoricalDist,
    FloatDist,
    IntDist,
    Resources,
    SearchSection,
    SitesDist,
    SpecError,
    SpecErrors,
    SweepSpec,
)
from trainables.config import UNKNOWN_KEY_ERRORS
from trainables.errors import did_you_mean

KeyPath = tuple  # the keys (str) and list indices (int) from the file's top to a value
DISTRIBUTIONS = {"int": IntDist, "float": FloatDist, "categorical": CategoricalDist, "sites": SitesDist}
SECTIONS = {(): SweepSpec, ("search",): SearchSection, ("resources",): Resources}
ENTRY_SECTIONS = ("space", "search", "resources")  # a bad entry of these goes alone; elsewhere the whole section
EXPECTED_DISTRIBUTION = (
    "expected a distribution (a mapping with type int, float, categorical or sites) or a list of choices"
)
FAILED = object()  # what a check group returns when it failed or was skipped


def dotted(path: KeyPath) -> str:
    """``("search", "metric", 0)`` → ``search.metric[0]``: the key path as the errors name it."""
    return "".join(f"[{p}]" if isinstance(p, int) else f"{'.' if i else ''}{p}" for i, p in enumerate(path))


class Problems:
    """The errors found so far in one sweep file, and its unsure key paths (see the module's docstring)."""

    def __init__(self, file: str, errors: Sequence[SpecError] = (), unsure: Sequence[KeyPath] = ()):
        self.file, self.errors, self.unsure = file, list(errors), set(unsure)

    def reads_unsure(self, reads: Sequence[KeyPath]) -> bool:
        return any(u[: len(r)] == r or r[: len(u)] == u for u in self.unsure for r in reads)

    def run(self, reads: Sequence[KeyPath], check: Callable, *args) -> Any:
        """``check(*args)``; ``FAILED`` when it reads an unsure path (not run) or raises (its errors kept)."""
        if self.reads_unsure(reads):
            return FAILED
        try:
            return check(*args)
        except SpecError as exc:  # a SpecErrors (a check that found several): each its own error
            self.errors.extend(getattr(exc, "errors", [exc]))
            return FAILED

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(self.errors)


def validate_spec(data: dict, file: str) -> tuple[SweepSpec | None, Problems]:
    """The spec of ``data`` (of its valid part, if pydantic refuses some of it, or None if even that fails) and the
    problems pydantic found."""
    try:
        return SweepSpec.model_validate(data), Problems(file)
    except ValidationError as exc:
        raw = exc.errors()
    shaped = SweepSpec._categorical_shorthand(data)  # the data as pydantic saw it: its locations index this
    errors = _reported(shaped, raw)
    problems = Problems(file, [SpecError(file, dotted(path), _message(err, path)) for err, path in errors])
    pruned = copy.deepcopy(data)
    for err, path in errors:
        if not path:
            continue  # the file as a whole: nothing to drop, and the second validation fails as the first
        dropped = path[:2] if path[0] in ENTRY_SECTIONS and len(path) > 1 else path[:1]
        if path[0] == "name":
            pruned["name"] = "unnamed"  # required, and read by no check
            continue
        node = pruned
        for part in dropped[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(dropped[-1], None)
        if not (err["type"] in UNKNOWN_KEY_ERRORS and dropped == path):  # a known key's value is gone: unsure
            problems.unsure.add(tuple(dropped))
    try:
        return SweepSpec.model_validate(pruned), problems
    except ValidationError:
        return None, problems


def _key_path(data: Any, loc: tuple, missing: bool) -> tuple[KeyPath, int]:
    """pydantic's ``loc`` without its union tags (``int``, ``list[str]``: the elements that index no data, but for
    the last one of a ``missing`` error, the missing key), and where the first tag stood (``len(loc)`` if none)."""
    path, node, branch = [], data, len(loc)
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (missing and i == len(loc) - 1):
            branch = min(branch, i)
            continue
        path.append(part)
    return tuple(path), branch


def _reported(data: Any, raw: list[dict]) -> list[tuple[dict, KeyPath]]:
    """The errors to report, each with its key path, unknown keys first (a typo there often explains the rest):
    one per union (the alternative that got furthest into the value, or all of them said together), and no
    ``missing`` for a field that an unknown key beside it misspells (its did-you-mean says so)."""
    located = [(err, *_key_path(data, err["loc"], err["type"] == "missing")) for err in raw]
    unions: dict[tuple, list] = {}
    for err, path, branch in located:
        if branch < len(err["loc"]):
            unions.setdefault(tuple(err["loc"][:branch]), []).append((err, path))
    errors = []
    for err, path, branch in located:
        alternatives = unions.get(tuple(err["loc"][:branch]), [])
        if len({e["loc"][branch] for e, _ in alternatives}) > 1:  # the alternatives of one union: said once
            if err is not alternatives[0][0]:
                continue
            deepest = max(len(p) for _, p in alternatives)
            chosen = [(e, p) for e, p in alternatives if len(p) == deepest]
            if len(chosen) > 1:
                words = [e["msg"] for e, _ in chosen]
                merged = words[0] + "".join(f", or {re.sub(r'^Input should be ', '', w)}" for w in words[1:])
                chosen = [({**chosen[0][0], "msg": merged}, chosen[0][1])]
            errors += chosen
        else:
            errors.append((err, path))
    unknown = {(p[:-1], p[-1]) for e, p in errors if e["type"] in UNKNOWN_KEY_ERRORS and p}
    errors = [
        (e, p)
        for e, p in errors
        if not (e["type"] == "missing" and any(parent == p[:-1] and did_you_mean(k, [p[-1]]) for parent, k in unknown))
    ]
    return sorted(errors, key=lambda ep: ep[0]["type"] not in UNKNOWN_KEY_ERRORS)


def _message(err: dict, path: KeyPath) -> str:
    """What was expected at ``path``, in the file's terms."""
    kind, got = err["type"], err.get("input")
    if kind in UNKNOWN_KEY_ERRORS:
        section = SECTIONS.get(path[:-1])
        if section is None and len(path) == 3 and path[0] == "space":  # a distribution's key: the type's fields
            tags = [p for p in err["loc"] if p in DISTRIBUTIONS]
            section = DISTRIBUTIONS.get(tags[0]) if tags else None
        if section is None:
            return "unknown key"
        valid = list(section.model_fields)
        return f"unknown key; valid keys: {', '.join(valid)}{did_you_mean(path[-1], valid)}"
    if path[:1] == ("space",) and len(path) == 2:
        if kind == "union_tag_invalid":
            tag = err["ctx"]["tag"]
            return f"{EXPECTED_DISTRIBUTION}; got type {tag!r}{did_you_mean(tag, DISTRIBUTIONS)}"
        if kind == "union_tag_not_found":
            return f"{EXPECTED_DISTRIBUTION}; this mapping has no type"
        if kind in ("model_attributes_type", "model_type", "dict_type"):
            scalar = got is None or isinstance(got, (bool, int, float, str))
            fixed = f" — a fixed value belongs in trial: (trial: {{{path[1]}: {got!r}}})" if scalar else ""
            return f"{EXPECTED_DISTRIBUTION}; got {got!r}{fixed}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys to values; got {got!r}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        return f"expected one of {', '.join(expected)}; got {got!r}{did_you_mean(got, expected)}"
    if kind == "missing":
        return err["msg"]
    return f"{err['msg']} (got {got!r})"
