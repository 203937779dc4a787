"""What a one-shot sweep (``search.strategy: oneshot``, DESIGN.md §6) must say, checked before Ray starts.

It searches the insertion mask only (``space: {mask: {type: sites}}``), with LSLU or another activation that
inserts; its objectives must be what the mask search can score on the supernet (``MASK_SCORES``); the black-box
options that have no meaning there (a grid, num_samples, population_size) are refused rather than ignored.
"""

from __future__ import annotations

from search_spaces.objectives import metric_key
from search_spaces.schema import SpecError

# the objectives a mask search scores on the supernet, and what it measures for each: the supernet's validation
# figures with the mask's inherited weights, or the mask's deploy form (orchestrator/mask_search.py)
MASK_SCORES = {
    "val_acc": "val_acc",
    "best_val_acc": "val_acc",
    "val_loss": "val_loss",
    "min_val_loss": "val_loss",
    "latency_ms": "latency_ms",
    "params_m": "params_m",
    "flops_g": "flops_g",
    "lslu_sites": "lslu_sites",
}
ALGORITHMS = ("tpe", "nsga2", "random")  # Optuna samplers of the mask search


def check_oneshot(sweep) -> None:
    """A SpecError naming the key where the one-shot sweep ``sweep`` (a ``schema.Sweep``) cannot run as written."""
    spec, file, s = sweep.spec, sweep.file, sweep.spec.search
    if set(spec.space) != {"mask"} or spec.space["mask"].type != "sites":
        searched = ", ".join(spec.space) or "nothing"
        raise SpecError(
            file,
            "space",
            f"search.strategy oneshot searches the insertion mask only: give space: {{mask: {{type: sites}}}} "
            f"(it searches {searched}); put the other values in trial, or use strategy blackbox",
        )
    if not sweep.base.inserts:
        raise SpecError(
            file,
            "trial.insert_act",
            f"the supernet puts {sweep.base.insert_act!r} beside the base activation, but with these values it "
            "inserts nothing (LSLU with n = 0?)",
        )
    if s.algorithm not in ALGORITHMS:
        raise SpecError(
            file, "search.algorithm", f"the mask search samples with {', '.join(ALGORITHMS)}; got {s.algorithm}"
        )
    for i, (metric, _) in enumerate(sweep.objectives):
        if metric not in MASK_SCORES:
            raise SpecError(
                file,
                metric_key(s, i),
                f"the mask search cannot score {metric!r} on the supernet; use {', '.join(MASK_SCORES)}",
            )
    for key in ("num_samples", "population_size"):
        if key in s.model_fields_set and not sweep.smoke:  # the smoke form sets num_samples itself
            raise SpecError(
                file,
                f"search.{key}",
                "has no meaning with strategy oneshot: the mask search scores search.eval_masks masks and "
                "search.candidates of them are retrained",
            )


def feasible_masks(eligible: str, max_sites: int | None) -> int:
    """How many masks the mask search can choose from: subsets of the eligible sites with at most ``max_sites`` on."""
    import math

    k = eligible.count("1")
    return sum(math.comb(k, c) for c in range(min(k, max_sites if max_sites is not None else k) + 1))


def describe_search(sweep) -> str:
    """What the search runs, for ``validate``: ``tpe, 8 trials``, or a one-shot sweep's phases."""
    s = sweep.spec.search
    if s.strategy != "oneshot":
        return f"{s.algorithm}, {s.num_samples} trials"
    from trainables.insertion import mask_of, sites_for

    eligible = mask_of(sweep.sites, sites_for(sweep.sites, "all", sweep.base.insert_act))  # where the supernet chooses
    feasible = feasible_masks(eligible, s.max_sites)
    scored = f"every one of its {feasible} feasible masks" if feasible <= s.eval_masks else f"{s.eval_masks} masks"
    epochs = s.supernet_epochs or sweep.base.epochs
    return f"one-shot: a supernet of {epochs} epochs, {scored} scored on it ({s.algorithm}), {s.candidates} retrained"
