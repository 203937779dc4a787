"""The one-shot supernet and its mask search (trainables/supernet.py, orchestrator/mask_search.py), in plain torch:
a fixed mask of the supernet is the plain network with that mask applied, sampling is uniform over the feasible
masks, BatchNorm recalibration touches only BatchNorm buffers, and the candidates, τ and the scoring are checked
against independent calculations."""

import itertools
import math
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
import torch
from torch import nn

from orchestrator.mask_search import STATE_FILE, candidates, kendall_tau, search_masks
from search_spaces.schema import SpecError, parse_sweep
from trainables.config import TrialConfig
from trainables.loop import build_network
from trainables.supernet import MaskSampler, SiteChoice, SupernetTraining, extract

SMALL = dict(dataset="digits", insert_act="lslu", n=1, epochs=1, train_samples=256, val_samples=128, policy="all")


def _supernet(**kwargs) -> SupernetTraining:
    return SupernetTraining(TrialConfig(**{**SMALL, "model": "digits_cnn", **kwargs.pop("cfg", {})}), **kwargs)


def _perturbed(model: nn.Module) -> None:
    """Weights and BatchNorm statistics away from their initial values, so a wrong mapping could not match."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


@pytest.mark.parametrize(
    "model, extra, mask",
    [
        ("digits_cnn", {}, "0101"),
        ("digits_cnn", {}, "1111"),
        ("resnet18", {"cifar_stem": True, "image_size": 16}, "10000010001000100"),
    ],
)
def test_the_supernet_with_a_fixed_mask_is_the_plain_network_with_that_mask(model, extra, mask):
    training = _supernet(cfg={"model": model, **extra})
    _perturbed(training.model)
    plain_cfg = TrialConfig(**{**SMALL, "model": model, **extra, "policy": "mask", "mask": mask})
    reference, reference_mask = build_network(plain_cfg, training.data.num_classes, training.data.in_chans)
    assert reference_mask == mask
    extracted = extract(training.model, mask, training.sites)
    assert not any(isinstance(m, SiteChoice) for m in extracted.modules())
    reference.load_state_dict(extracted.state_dict())  # strict: the same modules under the same names
    x = torch.randn(3, training.data.in_chans, plain_cfg.image_size, plain_cfg.image_size)
    training.model.eval()
    reference.eval()
    training._use(mask)  # the supernet itself, switched to the mask, computes the same
    with torch.no_grad():
        torch.testing.assert_close(training.model(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(extracted.eval()(x), reference(x), rtol=0, atol=0)


def test_a_mask_turning_on_a_site_without_a_choice_is_refused():
    training = _supernet()
    with pytest.raises(ValueError, match="has 3 bits but the model has 4"):
        training.evaluate_mask("010")


@pytest.mark.parametrize("max_sites", [None, 2])
def test_sampling_is_uniform_over_the_feasible_masks(max_sites):
    eligible = "10111"  # site 1 has no choice
    sample = MaskSampler(eligible, max_sites, torch.Generator().manual_seed(0))
    feasible = {
        "".join(bits)
        for bits in itertools.product("01", repeat=5)
        if bits[1] == "0" and (max_sites is None or bits.count("1") <= max_sites)
    }
    draws = 400 * len(feasible)
    counts = Counter(sample() for _ in range(draws))
    assert set(counts) == feasible
    expected = draws / len(feasible)
    chi2 = sum((counts[m] - expected) ** 2 / expected for m in feasible)
    assert chi2 < 3 * len(feasible)  # chi-square with len-1 degrees of freedom: far below this unless biased


def test_each_training_step_runs_a_sampled_mask_and_evaluation_the_reference_mask():
    training = _supernet(max_sites=2)
    on = []  # sites on in each training step's forward

    def record(module, args, output):
        if module.training:
            on.append(module.on)

    for choice in [m for m in training.model.modules() if isinstance(m, SiteChoice)]:
        choice.register_forward_hook(record)
    training.run_epoch()
    steps = math.ceil(training.data.n_train / training.cfg.batch_size)
    assert training.sampled == steps and len(on) == 4 * steps
    per_step = [sum(on[i : i + 4]) for i in range(0, len(on), 4)]
    assert max(per_step) <= 2
    assert training.reference_mask == "1100"  # the first max_sites eligible sites
    state = training.act_history[-1]["state"]
    assert set(state) == {s.path for s in training.sites}  # θ/ω reported under the site's own path


def test_recalibration_for_a_mask_changes_only_batchnorm_buffers():
    training = _supernet()
    training.run_epoch()
    before = {k: v.clone() for k, v in training.model.state_dict().items()}
    training.evaluate_mask("1010")
    after = training.model.state_dict()
    norms = {n for n, m in training.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[0] in norms for k in changed)
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in changed)


def test_a_restored_supernet_continues_the_same_mask_sequence():
    first = _supernet(cfg={"epochs": 2})
    first.run_epoch()
    state = first.state_dict()
    masks = [first.sample() for _ in range(5)]
    second = _supernet(cfg={"epochs": 2})
    second.load_state_dict(state)
    assert [second.sample() for _ in range(5)] == masks and second.sampled == first.sampled


def _rows(scores):
    return [
        {"mask": m, "val_acc": a, "val_loss": 1 - a / 100, "latency_ms": lat, "params_m": 0, "flops_g": 0,
         "lslu_sites": m.count("1")}
        for m, (a, lat) in scores.items()
    ]  # fmt: skip


def test_candidates_are_the_best_or_the_thinned_pareto_front():
    rows = _rows({"00": (50, 1.0), "01": (70, 2.0), "10": (60, 3.0), "11": (90, 4.0), "0x": (40, 0.5)})
    assert [r["mask"] for r in candidates(rows, [("best_val_acc", "max")], 2)] == ["11", "01"]
    objectives = [("best_val_acc", "max"), ("latency_ms", "min")]
    # the front: 11, 01, 00, 0x (10 is beaten by 01 on both); best first, thinned to 3 evenly: 11, 01 or 00, 0x
    front = [r["mask"] for r in candidates(rows, objectives, 4)]
    assert front == ["11", "01", "00", "0x"]
    thinned = [r["mask"] for r in candidates(rows, objectives, 2)]
    assert thinned == ["11", "0x"]  # the front's two ends
    filled = [r["mask"] for r in candidates(rows, objectives, 5)]
    assert filled == ["11", "01", "00", "0x", "10"]


def test_kendall_tau_counts_concordant_pairs():
    xs, ys = [1, 2, 3, 4], [10, 30, 20, 40]
    pairs = list(itertools.combinations(range(4), 2))
    concordant = sum((xs[i] - xs[j]) * (ys[i] - ys[j]) > 0 for i, j in pairs)
    assert kendall_tau(xs, ys) == pytest.approx((2 * concordant - len(pairs)) / len(pairs))
    assert math.isnan(kendall_tau([1], [2]))


@pytest.mark.parametrize("eval_masks, exhaustive", [(20, True), (5, False)])
def test_the_mask_search_scores_distinct_masks_from_the_checkpoint(eval_masks, exhaustive):
    training = _supernet()
    training.run_epoch()
    config = training.cfg.to_dict()
    with tempfile.TemporaryDirectory() as d:
        torch.save({"training": training.state_dict()}, Path(d) / STATE_FILE)
        found = search_masks(d, config, 3, [("best_val_acc", "max"), ("latency_ms", "min")], "nsga2", eval_masks, 0,
                             ["0000"])  # fmt: skip
    masks = [r["mask"] for r in found["rows"]]
    assert found["exhaustive"] is exhaustive and masks[0] == "0000" and len(set(masks)) == len(masks)
    assert all(m.count("1") <= 3 for m in masks)
    assert len(masks) == (15 if exhaustive else eval_masks)  # 2^4 masks, less the one with four sites on
    for row in found["rows"][:3]:  # the scores are the supernet's with that mask, recalibrated
        assert (row["val_loss"], row["val_acc"]) == pytest.approx(training.evaluate_mask(row["mask"]))
        assert row["lslu_sites"] == row["mask"].count("1")
    per_mask = min(training.cfg.bn_recalibrate_batches * training.cfg.batch_size, 256) + 128
    assert found["cost_trainings"] == pytest.approx(len(masks) * per_mask / (3 * 256 * 1))


def test_the_mask_search_refuses_tpe_for_two_objectives_as_the_sweep_file_does():
    two = [("best_val_acc", "max"), ("latency_ms", "min")]
    with pytest.raises(ValueError, match="tpe searches one metric; this sweep has 2 .*use nsga2"):
        search_masks("no-checkpoint-read", {}, 3, two, "tpe", 5, 0)  # refused before the checkpoint is read
    with pytest.raises(SpecError, match="tpe searches one metric"):
        parse_sweep({**ONESHOT, "search": {**ONESHOT["search"], "algorithm": "tpe"}}, "", "os.yaml")


ONESHOT = {
    "name": "os",
    "trial": {"model": "digits_cnn", "insert_act": "lslu", "n": 1, "epochs": 2},
    "space": {"mask": {"type": "sites"}},
    "search": {"strategy": "oneshot", "algorithm": "nsga2", "metric": ["best_val_acc", "latency_ms"]},
}


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"space": {"mask": {"type": "sites"}, "lr": [0.1, 0.2]}}, "space", "searches the insertion mask only"),
        ({"search": {"strategy": "oneshot", "metric": "train_loss"}}, "search.metric", "cannot score"),
        ({"search": {"strategy": "oneshot", "num_samples": 8}}, "search.num_samples", "no meaning"),
        ({"search": {"strategy": "oneshot", "algorithm": "grid"}}, "search.algorithm", "tpe, nsga2, random"),
        ({"trial": {"model": "digits_cnn", "n": 0}}, "trial.insert_act", "inserts nothing"),
    ],
)
def test_a_oneshot_sweep_that_cannot_run_is_refused_naming_the_key(change, key, message):
    with pytest.raises(SpecError) as err:
        parse_sweep({**ONESHOT, **change}, "", "os.yaml")
    assert err.value.key == key and message in err.value.message


def test_a_oneshot_sweep_trains_its_candidates():
    sweep = parse_sweep({**ONESHOT, "search": {**ONESHOT["search"], "candidates": 3}}, "", "os.yaml")
    assert sweep.spec.search.num_samples == 3 and sweep.site_count == 4


def test_validate_says_what_a_oneshot_sweep_runs(tmp_path, capsys):
    from orchestrator.cli import main

    path = tmp_path / "os.yaml"
    path.write_text(yaml.safe_dump({**ONESHOT, "search": {**ONESHOT["search"], "max_sites": 2, "eval_masks": 10}}))
    assert main(["validate", str(path)]) == 0
    # digits_cnn: 4 eligible sites, at most 2 on: 1 + 4 + 6 = 11 feasible masks, more than eval_masks
    assert "ok (one-shot: a supernet of 2 epochs, 10 masks scored on it (nsga2), 4 retrained" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**ONESHOT, "search": {**ONESHOT["search"], "max_sites": 2}}))
    assert main(["validate", str(path)]) == 0
    assert "every one of its 11 feasible masks scored on it" in capsys.readouterr().out
