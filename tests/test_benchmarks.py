"""The benchmarks run and measure what they say, at tiny sizes on the CPU (their figures are in benchmarks/README.md;
speed is never asserted here)."""

import argparse
import time

import pytest
import torch
import yaml

from benchmarks import bench_activation, bench_insertion, bench_model, bench_sweep, common
from search_spaces.schema import parse_sweep


def test_activation_benchmark_counts_what_autograd_keeps():
    shape = [2, 8, 8, 8]  # 8 channels: the CPU kernel serves shipped
    rows = bench_activation.measure(
        torch.device("cpu"), shape, "relu", [1], channels_last=False, dtype=torch.float32, rounds=1
    )
    by = {r["variant"]: r for r in rows}
    # ops only: LSLU_KERNEL=eager
    assert list(by) == ["relu", "lslu n=1 naive", "lslu n=1 shipped", "lslu n=1 ops only"]
    assert by["relu"]["saved_mb"] * 2**20 == 2 * 8 * 8 * 8 * 4  # ReLU keeps its output for backward: one fp32 tensor
    assert by["relu"]["time_x_relu"] == 1 and by["relu"]["saved_x_relu"] == 1
    for row in rows:
        assert row["ms"] > 0 and row["time_x_relu"] == pytest.approx(row["ms"] / by["relu"]["ms"])
    assert by["lslu n=1 shipped"]["saved_x_relu"] > 1  # the series, the depthwise conv and its BatchNorm keep more
    # the kernel changes no saved tensor
    assert by["lslu n=1 ops only"]["saved_mb"] == by["lslu n=1 shipped"]["saved_mb"]


def test_model_benchmark_measures_every_policy_against_none():
    rows = bench_model.measure(
        "digits_cnn", torch.device("cpu"), batch=2, size=8, channels_last=False, amp=False, width=1.0, rounds=1
    )
    assert [r["policy"] for r in rows] == list(bench_model.POLICIES)
    none = rows[0]
    assert none["train_x"] == none["latency_x"] == none["saved_x"] == 1
    for row in rows:
        assert row["train_ms"] > 0 and row["latency_ms"] > 0
        assert row["train_x"] == pytest.approx(row["train_ms"] / none["train_ms"])
    assert rows[-1]["saved_mb"] > none["saved_mb"]  # LSLU at every site keeps more for backward than ReLU


def test_sweep_benchmark_separates_fixed_and_per_trial_overhead():
    fixed, per_trial, slots = 12.0, 0.75, 2  # a sweep's idle slot-seconds: fixed × slots + per_trial × trials
    small = {"trials": 8, "slots": slots, "idle_slot_s": fixed * slots + per_trial * 8}
    large = {"trials": 32, "slots": slots, "idle_slot_s": fixed * slots + per_trial * 32}
    assert bench_sweep.split_fixed_marginal(small, large) == pytest.approx((fixed, per_trial))


def test_repeated_sweeps_are_split_at_the_median_of_each_size():
    smalls = [{"trials": 8, "slots": 2, "idle_slot_s": v} for v in (40.0, 42.0, 38.0)]
    larges = [{"trials": 32, "slots": 2, "idle_slot_s": v} for v in (50.0, 56.0, 52.0)]
    assert bench_sweep.median_row(smalls)["idle_slot_s"] == 40.0 and bench_sweep.median_row(larges)["trials"] == 32
    # per trial 10/24, 14/24, 14/24 s; fixed (idle − 8 × that) / 2
    singles = [bench_sweep.split_fixed_marginal(small, large) for small, large in zip(smalls, larges)]
    assert bench_sweep.spread(singles) == (
        " — from the medians of 3 sweeps of each size; single pairs give 0.42–0.58 s per trial and 16.7–18.7 s fixed"
    )
    assert bench_sweep.spread(singles[:1]) == ""


@pytest.mark.slow
def test_sweep_benchmark_runs_a_real_sweep(ray_local):
    row = bench_sweep.run(trials=2, concurrent=1, reuse=True, cpu=1.0, gpu=0.0)
    assert row["completed"] == 2 and row["trials"] == 2
    assert row["wall_s"] > row["train_s"] > 0  # the sweep's time holds both trials' training
    assert row["overhead_s_per_trial"] == pytest.approx((row["wall_s"] - row["train_s"]) / 2)
    assert row["figures_cpu_s"] > 0  # the driver drew both trials' figures, and counted the CPU it took


@pytest.mark.slow
def test_start_up_is_measured_against_the_by_hand_peer_as_whole_processes():
    """Both sweeps of the side-by-side comparison run as the processes a user starts, and their trials' training is
    read back from the MLflow store each wrote."""
    args = argparse.Namespace(concurrent=1, trial={})
    rows = [bench_sweep.run_whole(tool, 2, args) for tool in ("lslu-sweep", "peer, reusing actors")]
    for row in rows:
        assert row["completed"] == 2 and row["slots"] == 1
        assert row["wall_s"] > row["train_s"] > 0
        assert row["overhead_s_per_trial"] == pytest.approx((row["wall_s"] - row["train_s"]) / 2)


def test_the_peer_comparison_refuses_trial_keys_the_peer_cannot_take():
    with pytest.raises(SystemExit, match="takes only epochs.*batch_size"):
        bench_sweep.main(["--peer", "--trial", "epochs=2", "batch_size=32"])


def test_gpu_busy_share_spans_the_first_to_the_last_busy_sample():
    samples = [0.0, 0.0, 50.0, 100.0, 0.0, 80.0, 0.0]  # start-up, two trials with a gap, the closing plots
    assert common.busy_share(samples) == pytest.approx((230 / 7, 230 / 4))
    assert common.busy_share([0.0, 0.0]) == (0.0, 0.0) and common.busy_share([]) == (None, None)


def test_gpu_busy_reads_nvml_where_there_is_one():
    with common.GpuBusy(period=0.01) as gpus:
        time.sleep(0.05)
    if common.nvml() is None:  # this machine: no NVIDIA driver, so no samples and no figure
        assert gpus.samples == [] and gpus.busy_pct is None and gpus.active_pct is None
    else:
        assert gpus.samples and 0 <= gpus.busy_pct <= 100


def test_packing_sweep_is_a_valid_sweep_with_the_trial_keys_given():
    trial = bench_sweep.trial_overrides(["epochs=3", "cifar_stem=false", "weight_decay=0.01"], bench_sweep.SMALL_MODEL)
    assert trial == {**bench_sweep.SMALL_MODEL, "epochs": 3, "cifar_stem": False, "weight_decay": 0.01}
    text = bench_sweep.sweep_text(16, 4, True, 1.0, 0.25, trial)
    sweep = parse_sweep(yaml.safe_load(text), text, "bench_sweep.yaml")
    assert sweep.spec.resources.gpu == 0.25 and sweep.spec.search.max_concurrent == 4
    assert sweep.spec.trial["model"] == "resnet18" and sweep.spec.trial["epochs"] == 3 and sweep.spec.trial["n"] == 1
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench_sweep.trial_overrides(["epochs"], {})
    # lr is the searched key: before any sweep starts
    with pytest.raises(SystemExit, match="space.lr: also fixed in trial.lr"):
        bench_sweep.main(["--packing", "1", "--trial", "lr=0.01"])


@pytest.mark.slow
def test_sweep_benchmark_trains_its_small_model(ray_local):
    shrunk = {**bench_sweep.SMALL_MODEL, "train_samples": 64, "val_samples": 32, "batch_size": 32, "epochs": 1}
    row = bench_sweep.run(trials=1, concurrent=1, reuse=True, cpu=1.0, gpu=0.0, trial=shrunk)
    assert row["completed"] == 1 and row["wall_s"] > row["train_s"] > 0
    if common.nvml() is None:
        assert row["gpu_busy_%"] is None


def _truth_rows(means: dict[str, float], noise: list[float]) -> list[dict]:
    return [
        {"mask": m, "seed": s, "best_val_acc": mean + e, "val_acc": mean + e}
        for m, mean in means.items()
        for s, e in enumerate(noise)
    ]


def test_insertion_benchmark_judges_picks_by_the_truth():
    masks = bench_insertion.all_masks()
    assert len(masks) == 2**bench_insertion.SITES and len(set(masks)) == len(masks)
    means = {m: 60.0 + 6.0 * m.count("1") - 0.5 * int(m, 2) / 64 for m in masks}  # 111111 best, 000000 worst
    truth = bench_insertion.Truth(_truth_rows(means, [-1.0, 0.0, 1.0]))
    assert truth.best == "111111" and truth.std == pytest.approx(1.0)  # each mask's seed std is 1
    assert truth.regret("111110") == pytest.approx((means["111111"] - means["111110"]) / 1.0)
    # a supernet that ranks like the truth: its best is the exhaustive best
    assert bench_insertion.oneshot_pick(truth, dict(means), 0, search_seed=0) == "111111"
    # retraining the top 3 answers the one with the best standalone result at the sweep's trial seed
    scores = {**{m: 0.0 for m in masks}, "000000": 3.0, "011111": 2.0, "111111": 1.0}
    assert bench_insertion.oneshot_pick(truth, scores, 0, search_seed=0) == "000000"
    assert bench_insertion.oneshot_pick(truth, scores, 3, search_seed=0) == "111111"
    # a black-box search sees one seed's result per mask it trains and answers the best it saw
    for algorithm in ("random", "tpe", "nsga2"):
        pick = bench_insertion.blackbox_pick(truth, algorithm, budget=8, search_seed=1)
        assert pick in masks and truth.regret(pick) >= 0


def test_insertion_benchmark_trains_masks_and_scores_a_supernet():
    recipe = {**bench_insertion.RECIPE, "epochs": 1}
    plain = bench_insertion._train(("100001", 0, recipe))
    assert plain["mask"] == "100001" and 0 < plain["val_acc"] <= plain["best_val_acc"] <= 100
    rows = bench_insertion._supernet((0, recipe))
    assert sorted(r["mask"] for r in rows) == bench_insertion.all_masks()  # 64 ≤ eval_masks: every mask scored
    assert all(0 < r["val_acc"] <= 100 and r["cost_trainings"] > 0 for r in rows)
