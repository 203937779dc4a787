"""The objectives of a sweep file's search section: the metrics and modes it names, and a searcher that can take
that many (DESIGN.md §6: Optuna TPE searches one objective, NSGA-II several). ``Sweep`` runs these checks; each
problem is a ``SpecError`` naming the file and the key path.
"""

from __future__ import annotations

from search_spaces.schema import SearchSection, SpecError
from trainables.errors import did_you_mean
from trainables.metrics import OBJECTIVES

SINGLE_OBJECTIVE = ("tpe",)  # the searchers the sweep offers for one metric only


def metrics_of(s: SearchSection) -> list[str]:
    """``search.metric`` as a list (one metric may be written as a string)."""
    return [s.metric] if isinstance(s.metric, str) else list(s.metric)


def metric_key(s: SearchSection, i: int) -> str:
    """The key path of the ``i``-th metric: ``search.metric``, or ``search.metric[i]`` in a list."""
    return "search.metric" if isinstance(s.metric, str) else f"search.metric[{i}]"


def check_objectives(s: SearchSection, file: str) -> list[tuple[str, str]]:
    """The objectives, ``[(metric, mode), …]``: known metrics, each once, and one mode per metric (if any)."""
    metrics = metrics_of(s)
    for i, metric in enumerate(metrics):
        where = metric_key(s, i)
        if metric not in OBJECTIVES:
            raise SpecError(
                file,
                where,
                f"unknown metric {metric!r}; valid choices: {', '.join(OBJECTIVES)}{did_you_mean(metric, OBJECTIVES)}",
            )
        if metric in metrics[:i]:
            raise SpecError(file, where, f"{metric} is already an objective")
    if s.mode is None:
        modes = [OBJECTIVES[m] for m in metrics]
    else:
        modes = [s.mode] if isinstance(s.mode, str) else list(s.mode)
        if isinstance(s.mode, str) != isinstance(s.metric, str) or len(modes) != len(metrics):
            raise SpecError(
                file,
                "search.mode",
                f"give one mode per metric ({len(metrics)}: {', '.join(metrics)}), "
                f"or leave it out for each metric's natural direction; got {s.mode!r}",
            )
    return list(zip(metrics, modes))


def check_algorithm(s: SearchSection, file: str) -> None:
    """The searcher takes the sweep's number of objectives: tpe is the single-objective searcher here. (Optuna's
    TPESampler would run on several, but the project offers NSGA-II for that, and says so: a sweep that asks TPE for
    two metrics gets the searcher it names, not a silent stand-in.)"""
    error = algorithm_error(s.algorithm, metrics_of(s), "" if "algorithm" in s.model_fields_set else " (the default)")
    if error:
        raise SpecError(file, "search.algorithm", error)


def algorithm_error(algorithm: str, metrics: list[str], given: str = "") -> str | None:
    """Why ``algorithm`` cannot search ``metrics`` (tpe: one metric only), or None; ``given``: said after its name.
    The sweep file's check, and the one-shot mask search's (``search_masks``) for a caller that skipped it."""
    if algorithm in SINGLE_OBJECTIVE and len(metrics) > 1:
        return (
            f"{algorithm}{given} searches one metric; this sweep has {len(metrics)} ({', '.join(metrics)}); "
            "use nsga2 for several objectives (or random), or give search.metric one metric"
        )
    return None
