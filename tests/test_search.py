"""The searchers a sweep file asks for, driven directly (no Ray cluster): the same ``make_searcher`` the driver
builds (our ``SweepSearcher`` over its own Optuna study, with the define-by-run ``SpaceSampler``), fed results
by hand."""

import itertools
import math
import random
import textwrap

import pytest
import yaml

from orchestrator.search import MAX_SITES_CONSTRAINT, make_searcher
from orchestrator.summary import pareto_rows
from search_spaces.schema import parse_sweep
from trainables.config import TrialConfig
from trainables.insertion import apply_policy, list_sites
from trainables.models import build_model


def _sweep(text, file="sweep.yaml"):
    text = textwrap.dedent(text)
    return parse_sweep(yaml.safe_load(text), text, file)


def _mask(config, site_count):
    return "".join(str(config[f"site_{i}"]) for i in range(site_count))


def _drive(sweep, objective, trials=None):
    """Ask the searcher for ``trials`` configs (default: the sweep's budget), telling it ``objective(config)`` each
    time."""
    searcher = make_searcher(sweep)
    configs = []
    for i in range(trials or sweep.spec.search.num_samples):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", objective(config))
    return searcher.searcher, configs


# --- points_to_evaluate: sweep-file terms become the searcher's own values ---------------------------------------


def _policy_mask(policy: str) -> str:
    """The mask ``policy`` gives on ResNet-18 with the CIFAR stem, read from the modules apply_policy replaced."""
    model = build_model("resnet18", num_classes=10, in_chans=3, cifar_stem=True)
    paths = [s.path for s in list_sites(model)]
    replaced = set(apply_policy(model, policy, "lslu", n=1))
    return "".join("1" if p in replaced else "0" for p in paths)


def test_points_to_evaluate_are_the_policies_masks_and_are_tried_first():
    sweep = _sweep("""
        name: points
        trial: {model: resnet18, cifar_stem: true, n: 1, epochs: 1}
        space:
          mask: {type: sites}
          lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
        search:
          algorithm: tpe
          num_samples: 6
          points_to_evaluate:
            - {policy: none}
            - {policy: all, lr: 2.0e-3}
            - {policy: downsampling}
            - {policy: last_k, k: 3}
            - {policy: paths, paths: "layer2.*"}
    """)
    expected = [_policy_mask(p) for p in ("none", "all", "downsampling", "last_k:3", "paths:layer2.*")]
    assert expected[2] == "10000010001000100" and expected[3] == "00000000000000111"  # stem + first block of stages 2-4
    assert [_mask(p, 17) for p in sweep.points] == expected
    assert sweep.points[1]["lr"] == 2.0e-3 and "lr" not in sweep.points[0]

    _, configs = _drive(sweep, lambda c: {"best_val_acc": 50.0})
    assert [_mask(c, 17) for c in configs[:5]] == expected  # tried first, in order
    assert configs[1]["lr"] == 2.0e-3
    for config in configs:  # each is a whole trial config: policy mask, the bits folded by TrialConfig
        trial = TrialConfig.from_flat(config)
        assert trial.policy == "mask" and trial.mask == _mask(config, 17) and trial.model == "resnet18"


# --- grid -------------------------------------------------------------------------------------------------------

GRID = """
    name: grid
    trial: {epochs: 6, n: 1}
    space:
      insert_act: [lslu, pwlu, relu]
      n: {type: int, low: 1, high: 3, when: {insert_act: lslu}}
      seed: [0, 1]
    search: {algorithm: grid, scheduler: none, seed: 3}
"""


def test_grid_runs_every_distinct_point_once_and_its_size_is_the_budget():
    sweep = _sweep(GRID)
    # n only matters for lslu: (3 n values + pwlu + relu) × 2 seeds
    expected = {
        (act, n if act == "lslu" else None, seed)
        for act, n, seed in itertools.product(["lslu", "pwlu", "relu"], [1, 2, 3], [0, 1])
    }
    assert sweep.spec.search.num_samples == len(expected) == 10

    searcher, configs = _drive(sweep, lambda c: {"best_val_acc": random.random()})
    seen = [(c["insert_act"], c["n"] if c["insert_act"] == "lslu" else None, c["seed"]) for c in configs]
    assert sorted(seen, key=str) == sorted(expected, key=str)
    assert all(c["n"] == 1 for c in configs if c["insert_act"] != "lslu")  # the fixed value where n is not sampled


def test_a_grid_budget_that_is_not_its_size_is_refused():
    from search_spaces.schema import SpecError

    with pytest.raises(SpecError, match=r"search\.num_samples: the grid .* has 10 distinct trials"):
        _sweep(GRID.replace("seed: 3}", "seed: 3, num_samples: 12}"))


def test_a_mask_grid_with_max_sites_enumerates_the_feasible_masks():
    sweep = _sweep("""
        name: maskgrid
        trial: {epochs: 1, n: 1}
        space: {mask: {type: sites}}
        search: {algorithm: grid, max_sites: 2, scheduler: none}
    """)
    feasible = {"".join(bits) for bits in itertools.product("01", repeat=4) if bits.count("1") <= 2}
    assert sweep.spec.search.num_samples == len(feasible) == 11
    _, configs = _drive(sweep, lambda c: {"best_val_acc": 1.0})
    assert sorted(_mask(c, 4) for c in configs) == sorted(feasible)


# --- conditional keys, max_sites --------------------------------------------------------------------------------


def test_a_conditional_key_is_sampled_only_where_its_condition_holds():
    sweep = _sweep("""
        name: cond
        trial: {epochs: 6, n: 2}
        space:
          insert_act: [lslu, pwlu, la_silu]
          n: {type: int, low: 3, high: 4, when: {insert_act: lslu}}
          mask: {type: sites}
        search: {algorithm: tpe, num_samples: 12, seed: 1}
    """)
    searcher, configs = _drive(sweep, lambda c: {"best_val_acc": 10.0 * c["n"] + random.random()})
    trials = searcher.study.trials
    assert {c["insert_act"] for c in configs} == {"lslu", "pwlu", "la_silu"}
    for config, trial in zip(configs, trials):
        if config["insert_act"] == "lslu":
            assert config["n"] in (3, 4) and trial.params["n"] == config["n"]
        else:  # not an Optuna parameter of this trial: the trial keeps trial.n
            assert config["n"] == 2 and "n" not in trial.params
        assert sweep.active_keys(config) == (
            ["insert_act", "n", "mask"] if config["insert_act"] == "lslu" else ["insert_act", "mask"]
        )


@pytest.mark.parametrize("algorithm, metric", [("tpe", "best_val_acc"), ("nsga2", "[best_val_acc, lslu_sites]")])
def test_masks_over_max_sites_are_rejected_before_they_train(algorithm, metric):
    sweep = _sweep(f"""
        name: capped
        trial: {{model: resnet18, cifar_stem: true, n: 1, epochs: 1}}
        space: {{mask: {{type: sites}}}}
        search: {{algorithm: {algorithm}, metric: {metric}, num_samples: 24, max_sites: 4, seed: 0}}
    """)
    searcher, configs = _drive(
        sweep, lambda c: {"best_val_acc": random.random(), "lslu_sites": _mask(c, 17).count("1")}
    )
    assert all(_mask(c, 17).count("1") <= 4 for c in configs)
    # random draws of 17 bits are rarely within 4 (P = 0.025): many were told to the study as infeasible, none ran
    trials = searcher.study.trials
    assert searcher.rejected == len(trials) - len(configs) > 0
    for trial in trials:
        ones = sum(trial.params[f"site_{i}"] for i in range(17))
        assert trial.constraints == {MAX_SITES_CONSTRAINT: ones - 4}  # Optuna's record of the max_sites violation
    # the sampler learns from the rejections: random placement would reject about 1/p - 1 ≈ 40 masks per feasible one
    p_feasible = sum(math.comb(17, k) for k in range(5)) / 2**17
    assert searcher.rejected < 0.25 * len(configs) * (1 / p_feasible - 1), searcher.rejected


# --- multi-objective ----------------------------------------------------------------------------------------------


def test_nsga2_optimizes_two_objectives_and_the_pareto_front_is_the_non_dominated_trials():
    sweep = _sweep("""
        name: moo
        trial: {model: resnet18, cifar_stem: true, n: 1, epochs: 1}
        space: {mask: {type: sites}}
        search: {algorithm: nsga2, metric: [best_val_acc, latency_ms], num_samples: 40, population_size: 8, seed: 0}
    """)
    assert sweep.objectives == [("best_val_acc", "max"), ("latency_ms", "min")]
    rng = random.Random(0)

    def result(config):  # accuracy grows with the sites on, latency too
        ones = _mask(config, 17).count("1")
        return {"best_val_acc": 80 + ones + rng.uniform(-2, 2), "latency_ms": 1.0 + 0.1 * ones + rng.uniform(0, 0.05)}

    searcher, configs = _drive(sweep, result)
    assert [d.name for d in searcher.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    rows = [
        {"trial_id": t.number, "status": "completed", "best_val_acc": t.values[0], "latency_ms": t.values[1]}
        for t in searcher.study.trials
    ]
    front = pareto_rows(rows, sweep.objectives)
    brute = [
        r
        for r in rows
        if not any(
            o["best_val_acc"] >= r["best_val_acc"]
            and o["latency_ms"] <= r["latency_ms"]
            and o is not r
            and (o["best_val_acc"], o["latency_ms"]) != (r["best_val_acc"], r["latency_ms"])
            for o in rows
        )
    ]
    assert {r["trial_id"] for r in front} == {r["trial_id"] for r in brute} and len(front) >= 3
    assert [r["best_val_acc"] for r in front] == sorted((r["best_val_acc"] for r in front), reverse=True)
    # Optuna's own front agrees
    assert {t.number for t in searcher.study.best_trials} == {r["trial_id"] for r in front}


# --- the search beats random placement ----------------------------------------------------------------------------

TARGET = "10000010001000100"  # the known best mask of the synthetic problem (ResNet-18's downsampling sites)
BUDGET, SEEDS = 40, range(8)


def _proxy_accuracy(config) -> int:
    """A proxy objective over sites: +1 for each site that matches the best mask (so the best mask scores 17)."""
    return sum(_mask(config, 17)[i] == bit for i, bit in enumerate(TARGET))


def _best_found(algorithm, seed) -> int:
    sweep = _sweep(f"""
        name: synthetic
        trial: {{model: resnet18, cifar_stem: true, n: 1, epochs: 1}}
        space: {{mask: {{type: sites}}}}
        search: {{algorithm: {algorithm}, num_samples: {BUDGET}, seed: {seed}, scheduler: none}}
    """)
    _, configs = _drive(sweep, lambda c: {"best_val_acc": float(_proxy_accuracy(c))})
    return max(_proxy_accuracy(c) for c in configs)


def _expected_best_of_random(sites: int, draws: int) -> float:
    """E[max of `draws` Binomial(sites, 1/2)]: the best score random placement reaches on average, computed exactly."""
    cdf = [sum(math.comb(sites, j) for j in range(k + 1)) / 2**sites for k in range(sites + 1)]
    return sum(k * (cdf[k] ** draws - (cdf[k - 1] ** draws if k else 0.0)) for k in range(sites + 1))


def test_tpe_finds_better_masks_than_random_placement_within_the_same_budget():
    tpe = [_best_found("tpe", seed) for seed in SEEDS]
    rand = [_best_found("random", seed) for seed in SEEDS]
    expected_random = _expected_best_of_random(17, BUDGET)  # ≈ 13.3 of 17
    assert abs(sum(rand) / len(rand) - expected_random) < 1.0  # the random searcher is what theory says
    # TPE beats random for every seed, by about 2.5 matching sites on average, and beats the random expectation by 2
    assert all(t > r for t, r in zip(tpe, rand)), (tpe, rand)
    assert sum(tpe) / len(tpe) >= expected_random + 2.0, (tpe, expected_random)
    assert sum(tpe) / len(tpe) - sum(rand) / len(rand) >= 2.0, (tpe, rand)


# --- resume: the searcher's state in Tune's experiment checkpoint ---------------------------------------------------

RESUMED = {
    "tpe": """
        name: resumed
        trial: {model: resnet18, cifar_stem: true, n: 1, epochs: 1}
        space:
          mask: {type: sites}
          lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
        search: {algorithm: tpe, num_samples: 14, max_sites: 5, seed: 2, points_to_evaluate: [{policy: downsampling}]}
    """,
    "nsga2": """
        name: resumed
        trial: {model: resnet18, cifar_stem: true, n: 1, epochs: 1}
        space: {mask: {type: sites}}
        search: {algorithm: nsga2, metric: [best_val_acc, lslu_sites], num_samples: 14, population_size: 4,
                 max_sites: 6, seed: 0}
    """,
    "grid": GRID,
}


def _steps(searcher, ids, objective, configs):
    """Tune's order with two trials running at once: t<i+1> is suggested while t<i> reports its last epoch."""
    for i in ids:
        configs[f"t{i}"] = searcher.suggest(f"t{i}")
        if i >= 1:
            result = objective(configs[f"t{i - 1}"])
            searcher.on_trial_result(f"t{i - 1}", {**result, "training_iteration": 1})
            searcher.on_trial_complete(f"t{i - 1}", result)


@pytest.mark.parametrize("algorithm", RESUMED)
def test_a_restored_searcher_continues_the_same_study(algorithm, tmp_path):
    """Tune saves the searcher in its experiment checkpoint (SearchGenerator.save_to_dir) and, on Tuner.restore,
    loads it into the searcher it pickled when the sweep started: the sweep goes on as if never interrupted."""
    import pickle

    from ray.tune.search import SearchGenerator

    sweep = _sweep(RESUMED[algorithm])
    budget = sweep.spec.search.num_samples

    def objective(config):
        ones = _mask(config, 17).count("1") if "site_0" in config else 0
        return {"best_val_acc": float(ones + 0.1 * config.get("seed", 0)) + 0.01 * len(str(config)), "lslu_sites": ones}

    straight, through = {}, {}
    searcher = make_searcher(sweep)
    _steps(searcher, range(budget), objective, straight)
    searcher.on_trial_complete(f"t{budget - 1}", objective(straight[f"t{budget - 1}"]))

    first = SearchGenerator(make_searcher(sweep))
    pickled = pickle.dumps(make_searcher(sweep))  # the Tuner's own copy (tuner.pkl), taken before any trial
    _steps(first.searcher, range(budget // 2), objective, through)  # t<budget/2 - 1> is still running
    first.save_to_dir(str(tmp_path), session_str="s")
    restored = SearchGenerator(pickle.loads(pickled))
    restored.restore_from_dir(str(tmp_path))
    _steps(restored.searcher, range(budget // 2, budget), objective, through)
    restored.searcher.on_trial_complete(f"t{budget - 1}", objective(through[f"t{budget - 1}"]))

    assert through == straight
    a, b = searcher.searcher, restored.searcher.searcher
    assert b.rejected == a.rejected and len(b.study.trials) == len(a.study.trials) == budget + a.rejected
    record = [[(t.params, t.values, t.state, t.intermediate_values) for t in s.study.trials] for s in (a, b)]
    assert record[1] == record[0]
    assert all(t.state.name == "COMPLETE" for t in b.study.trials)  # the trial running at the save was told too


def test_a_study_in_an_rdb_storage_is_restored_and_told_through_it(tmp_path):
    """With an Optuna storage the trials live there: a restored searcher tells the same study in that storage."""
    import optuna

    from orchestrator.search import SpaceSampler, SweepSearcher, make_sampler

    sweep = _sweep(RESUMED["tpe"])
    space = SpaceSampler(
        {k: d.model_dump() for k, d in sweep.spec.space.items()},
        sweep.fixed_values(),
        sweep.site_count,
        sweep.spec.search.max_sites,
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = SweepSearcher(
        space,
        metric="best_val_acc",
        mode="max",
        sampler=make_sampler(sweep),
        max_sites=5,
        site_count=17,
        storage=storage,
        study_name="resumed-1",
    )
    for i in range(6):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"best_val_acc": float(i)})
    searcher.suggest("t6")
    searcher.save(str(tmp_path / "state.pkl"))
    assert searcher.rejected > 0
    other = SweepSearcher(
        space, metric="best_val_acc", mode="max", sampler=make_sampler(sweep), max_sites=5, site_count=17
    )
    other.restore(str(tmp_path / "state.pkl"))
    assert other.study.study_name == "resumed-1" and len(other.study.trials) == 7 + searcher.rejected
    other.on_trial_complete("t6", {"best_val_acc": 9.0})
    assert other.study.best_value == 9.0
    assert optuna.load_study(study_name="resumed-1", storage=storage).best_value == 9.0  # the storage's, not a copy
