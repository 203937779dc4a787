"""Phase 2 of the one-shot insertion search (DESIGN.md §6): masks scored on the trained supernet, by Optuna.

``search_masks`` runs where the supernet's checkpoint is, as a Ray task with a trial's resources
(``run_mask_search``), not on the driver. It rebuilds the supernet from its trial config, loads the weights, and
lets an Optuna sampler (TPE, NSGA-II or random, over one on/off choice per eligible site, ``max_sites`` as a
constraint) propose masks. Each distinct mask is scored once: validation accuracy and loss with the inherited weights,
BatchNorm statistics recalibrated for that mask first (``SupernetTraining.evaluate_mask``), and the deploy form's
``latency_ms``, ``params_m``, ``flops_g`` (``architecture_stats`` of the extracted plain network) and ``lslu_sites``.
A mask proposed again is told its recorded scores at no cost. Where the feasible masks are no more than
``eval_masks``, every one is scored (the search would only repeat them).

``candidates`` picks the masks to retrain: the best by the first objective, or the Pareto front for several
(thinned along the first objective, or filled with the best of the rest, to ``count``).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import time
from pathlib import Path

import optuna
import torch

from orchestrator.summary import dominates, ranked
from search_spaces.objectives import algorithm_error
from search_spaces.oneshot import MASK_SCORES, feasible_masks
from trainables.config import TrialConfig
from trainables.models.stats import architecture_stats
from trainables.supernet import SupernetTraining, extract

STATE_FILE = "state.pt"  # the trainable's checkpoint file (trainables/trainable.py)
SCORE_COLUMNS = ("val_acc", "val_loss", "latency_ms", "params_m", "flops_g", "lslu_sites")
FORWARDS_PER_STEP = 3  # a training step's forward and backward cost about three forward passes: the unit of the cost
MAX_DRAWS = 20  # proposals per scored mask before the search stops (the sampler keeps proposing scored masks)


def search_masks(
    checkpoint_dir: str,
    config: dict,
    max_sites: int | None,
    objectives: list[tuple[str, str]],
    algorithm: str,
    eval_masks: int,
    seed: int,
    first: list[str] = (),
) -> dict:
    """Score masks on the supernet of ``checkpoint_dir``; ``first``: masks scored before the sampler's (the sweep's
    points_to_evaluate). Returns ``rows`` (one per scored mask, in the order scored: ``mask`` and ``SCORE_COLUMNS``),
    ``exhaustive``, ``seconds`` and ``cost_trainings`` (images forwarded, over 3 × the images of a full training).
    ``algorithm`` must take that many ``objectives``, as a sweep file's must (tpe: one): ValueError otherwise."""
    error = algorithm_error(algorithm, [m for m, _ in objectives])
    if error:
        raise ValueError(error)
    start = time.perf_counter()
    training = SupernetTraining(TrialConfig.from_flat(config), max_sites=max_sites)
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location=training.device, weights_only=False)
    training.load_state_dict(state["training"])
    eligible = training.mask
    scored: dict[str, dict] = {}

    def score(mask: str) -> dict:
        if mask not in scored:
            val_loss, val_acc = training.evaluate_mask(mask)
            plain = extract(training.model, mask, training.sites)
            stats = architecture_stats(
                plain, (training.data.in_chans, training.cfg.image_size, training.cfg.image_size)
            )
            scored[mask] = {"mask": mask, "val_acc": val_acc, "val_loss": val_loss, **stats}
            scored[mask]["lslu_sites"] = mask.count("1")
        return scored[mask]

    for mask in first:
        score(mask)
    exhaustive = feasible_masks(eligible, max_sites) <= eval_masks
    if exhaustive:
        for mask in _all_masks(eligible, max_sites):
            score(mask)
    else:
        _optuna_search(score, scored, eligible, max_sites, objectives, algorithm, eval_masks, seed)
    cfg, data = training.cfg, training.data
    per_mask = min(cfg.bn_recalibrate_batches * cfg.batch_size, data.n_train) + data.n_val
    cost = len(scored) * per_mask / (FORWARDS_PER_STEP * data.n_train * cfg.epochs)
    seconds = time.perf_counter() - start
    return {"rows": list(scored.values()), "exhaustive": exhaustive, "seconds": seconds, "cost_trainings": cost}


def _all_masks(eligible: str, max_sites: int | None):
    slots = [i for i, bit in enumerate(eligible) if bit == "1"]
    for count in range(min(len(slots), max_sites if max_sites is not None else len(slots)) + 1):
        for on in itertools.combinations(slots, count):
            yield "".join("1" if i in on else "0" for i in range(len(eligible)))


def _optuna_search(score, scored, eligible, max_sites, objectives, algorithm, eval_masks, seed) -> None:
    """Ask and tell until ``eval_masks`` distinct masks are scored (or the sampler keeps repeating itself)."""
    study = optuna.create_study(
        directions=["maximize" if mode == "max" else "minimize" for _, mode in objectives],
        sampler=_sampler(algorithm, eval_masks, seed),
    )
    slots = [i for i, bit in enumerate(eligible) if bit == "1"]
    for _ in range(eval_masks * MAX_DRAWS):
        if len(scored) >= eval_masks:
            break
        trial = study.ask()
        on = {i for i in slots if trial.suggest_categorical(f"site_{i}", [0, 1])}
        if max_sites is not None:
            trial.set_constraint("max_sites", len(on) - max_sites)
            if len(on) > max_sites:  # never scored: told the worst values, ranked by its violation
                study.tell(trial, [-math.inf if mode == "max" else math.inf for _, mode in objectives])
                continue
        row = score("".join("1" if i in on else "0" for i in range(len(eligible))))
        study.tell(trial, [row[MASK_SCORES[metric]] for metric, _ in objectives])


def _sampler(algorithm: str, eval_masks: int, seed: int) -> optuna.samplers.BaseSampler:
    if algorithm == "tpe":  # Optuna 5's samplers read the constraint each trial sets (``set_constraint``)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(20, max(4, eval_masks // 10)))
    if algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, eval_masks // 10)), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def candidates(rows: list[dict], objectives: list[tuple[str, str]], count: int) -> list[dict]:
    """The masks to retrain: the ``count`` best by the first objective, or for several objectives the Pareto front
    (more than ``count``: evenly spaced along the first objective, its best kept; fewer: the best of the rest)."""
    keyed = [{**r, "status": "completed", **{m: r[MASK_SCORES[m]] for m, _ in objectives}} for r in rows]
    first = objectives[0]
    if len(objectives) == 1:
        return ranked(keyed, *first)[:count]
    front = ranked([r for r in keyed if not any(dominates(o, r, objectives) for o in keyed)], *first)
    if len(front) > count:
        step = (len(front) - 1) / max(count - 1, 1)
        return [front[round(i * step)] for i in range(count)] if count > 1 else front[:1]
    rest = [r for r in ranked(keyed, *first) if r not in front]
    return front + rest[: count - len(front)]


def mask_search_csv(rows: list[dict], chosen: list[str]) -> str:
    """``mask_search.csv``: every scored mask in the order scored, its scores, and whether it was retrained."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["order", "mask", *SCORE_COLUMNS, "retrained"])
    for i, row in enumerate(rows):
        writer.writerow([i, row["mask"], *(row[c] for c in SCORE_COLUMNS), row["mask"] in chosen])
    return out.getvalue()


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's τ-b between two rankings (NaN with fewer than two pairs or no variation)."""
    from scipy.stats import kendalltau

    if len(xs) < 2:
        return math.nan
    return float(kendalltau(xs, ys).statistic)
