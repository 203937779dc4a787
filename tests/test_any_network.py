"""Any network (DESIGN.md §3): `lslu-sweep sites` on timm and torchvision models gives stages where the network really
downsamples (checked against shapes from a real forward pass) and a `downsampling` policy with a site per downsampling
stage; a one-epoch trial of each runs with LSLU where the mask says; a policy that puts LSLU at an ineligible site is
refused by `validate`, naming the site and why."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from trainables.activations import LSLU, ChannelsLast
from trainables.config import TrialConfig
from trainables.insertion import list_sites, mask_of, select_sites, trace_sites
from trainables.loop import Training, build_network
from trainables.models import build_model

MODELS = [
    ("convnext_atto", False),
    ("regnetx_002", False),
    ("efficientnet_b0", False),
    ("mobilenetv3_small_050", False),
    ("torchvision.models:resnet18", False),
    ("resnet18", True),
]
FLAT_HEAD = "tests.user_models:build_mlp_head"  # two conv–ReLU sites, then a Hardswish on (B, F) features


def _table(out: str) -> list[dict]:
    """The rows of `lslu-sweep sites` output, read by the header's columns."""
    lines = out.splitlines()
    header = lines[0]
    col = {name: header.index(name) for name in ("downsampling", "layout", "selected", "eligible")}
    rows = []
    for line in lines[1:]:
        if not line[:5].strip().isdigit():
            break
        index, path, stage = line.split()[:3]
        rows.append(
            {
                "index": int(index),
                "path": path,
                "stage": int(stage),
                "downsampling": line[col["downsampling"] : col["downsampling"] + 12].strip() == "yes",
                "layout": line[col["layout"] : col["selected"]].strip(),
                "selected": line[col["selected"] : col["eligible"]].strip() == "x",
                "eligible": line[col["eligible"] :].startswith("yes"),
            }
        )
    return rows


def _real_resolutions(model: torch.nn.Module, paths: list[str], size: tuple) -> dict[str, tuple]:
    """(H, W) of each site's first input in a real forward pass on the CPU (hooks of this test, not the tracer's)."""
    seen: dict[str, tuple] = {}

    def record(path):
        def hook(module, args):
            seen.setdefault(path, tuple(args[0].shape[2:4]))

        return hook

    hooks = [model.get_submodule(p).register_forward_pre_hook(record(p)) for p in paths]
    with torch.no_grad():
        model.eval()(torch.randn(1, *size))
    for h in hooks:
        h.remove()
    return seen


def _area(res: tuple) -> int:
    return res[0] * res[1]


@pytest.mark.parametrize("name,cifar_stem", MODELS)
def test_sites_gives_stages_where_the_network_downsamples(name, cifar_stem, capsys):
    argv = ["sites", name, "--policy", "downsampling"] + ["--cifar-stem"] * cifar_stem
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert rows and f"{name}: {len(rows)} sites; downsampling selects" in out
    assert "functional activation calls:" in out
    model = build_model(name, num_classes=1000, cifar_stem=cifar_stem)
    size = trace_sites(model).input_size
    res = _real_resolutions(model, [r["path"] for r in rows], size)
    assert all(r["layout"] == "nchw" and r["eligible"] for r in rows)  # all spatial: NCHW convnets
    stages = [r["stage"] for r in rows]
    assert stages == sorted(stages) and len({s for s in stages if s > 0}) >= 3
    by_stage: dict[int, list] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    final = {k: res[group[-1]["path"]] for k, group in by_stage.items()}  # each stage's resolution after its drop
    ks = sorted(by_stage)
    for a, b in zip(ks, ks[1:]):
        assert _area(final[b]) <= _area(final[a])
        if a > 0:  # a new stage after the first is a new, smaller resolution
            assert _area(final[b]) < _area(final[a]), (a, b, final)
        # a stage's sites are at its resolution, or (before the strided layer of its first block) at the previous one
        kinds = [res[r["path"]] == final[b] for r in by_stage[b]]
        assert all(res[r["path"]] in (final[a], final[b]) for r in by_stage[b])
        assert kinds == sorted(kinds)
    if ks[0] > 0:  # no stem (ConvNeXt's has no activation): the first stage keeps one resolution
        assert all(res[r["path"]] == final[ks[0]] for r in by_stage[ks[0]])
    # `downsampling`: the stem's last site, and a site in each stage that drops the resolution (or, where a pooling
    # layer between blocks drops it, the site just before), except a drop to 1×1 (a global pool: the head)
    chosen = [r for r in rows if r["selected"]]
    assert chosen == [r for r in rows if r["downsampling"]] and chosen
    if ks[0] == 0:
        assert by_stage[0][-1]["selected"]
    for a, b in zip(ks, ks[1:]):
        if _area(final[b]) < _area(final[a]) and final[b] != (1, 1):
            before = rows[by_stage[b][0]["index"] - 1]
            assert any(r["selected"] for r in by_stage[b]) or before["selected"], (b, final)
    for r in chosen:  # and nothing else: each chosen site ends the stem or lies where the resolution drops
        k = r["stage"]
        nxt = [q for q in ks if q > k]
        drops_here = k == 0 or k > ks[0] and _area(final[k]) < _area(final[ks[ks.index(k) - 1]])
        drops_next = bool(nxt) and _area(final[nxt[0]]) < _area(final[k])
        assert drops_here or drops_next and r is by_stage[k][-1], r


@pytest.mark.parametrize("name", sorted({name for name, _ in MODELS}))
def test_a_one_epoch_trial_runs_with_lslu_at_the_downsampling_sites(name):
    # 32×32 synthetic images, each network with its family's CIFAR stem (3×3 stride 1: the maps stay large enough)
    cfg = TrialConfig.from_flat(
        {
            "model": name,
            "dataset": "synthetic",
            "image_size": 32,
            "cifar_stem": True,
            "act": "native",
            "insert_act": "lslu",
            "n": 1,
            "policy": "downsampling",
            "epochs": 1,
            "warmup_epochs": 0,
            "train_samples": 8,
            "val_samples": 4,
            "batch_size": 8,
            "bn_recalibrate_batches": 1,
            "device": "cpu",
        }
    )
    plain, _ = build_network(TrialConfig.from_flat({**cfg.to_dict(), "policy": "none"}), num_classes=10, in_chans=3)
    expected = mask_of(list_sites(plain), select_sites(list_sites(plain), "downsampling"))
    training = Training(cfg)
    assert training.mask == expected and expected.count("1") >= 3
    sites = list_sites(training.model)
    assert len(sites) == len(expected)  # an LSLU is a site too: the same sites, in the same order
    for site, bit in zip(sites, training.mask):
        module = training.model.get_submodule(site.path)
        inner = module.inner if isinstance(module, ChannelsLast) else module
        assert isinstance(inner, LSLU) == (bit == "1"), (site.path, type(inner).__name__)
        if bit == "1":
            assert inner.weight.shape[0] == site.channels  # its depthwise conv fits the site's channels
    metrics = training.run_epoch()
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert any(
        p.grad is not None and torch.isfinite(p.grad).all()
        for m in training.model.modules()
        if isinstance(m, LSLU)
        for p in m.parameters()
    )


def _sweep(tmp_path, trial: str, space: str = "", points: str = "") -> str:
    text = textwrap.dedent(f"""\
        name: flat_head
        trial: {{model: "{FLAT_HEAD}", dataset: digits, image_size: 8, epochs: 3, pwlu_warmup_epochs: 1, {trial}}}
        space: {{{space or "lr: {type: float, low: 0.001, high: 0.01}"}}}
        search: {{algorithm: random, num_samples: 2{points}}}
        """)
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "trial,space,where",
    [
        ('policy: mask, mask: "101"', "", "trial.mask"),
        ("policy: stages, stages: '3'", "", "trial.stages"),  # the head: after the stages of 8² and 4²
        ("policy: last_k, k: 1", "", "trial.k"),
        ("policy: mask", "mask: ['110', '011']", "space.mask"),
        ("policy: mask, mask: '001'", "insert_act: [pwlu, lslu]", "trial.mask"),
    ],
)
def test_lslu_at_an_ineligible_site_is_refused_before_ray(tmp_path, capsys, trial, space, where):
    assert main(["validate", _sweep(tmp_path, trial, space)]) == 2
    err = capsys.readouterr().err
    assert where in err and "head.1 (no spatial map: layout flat)" in err and "needs a spatial map" in err


def test_the_same_sites_take_an_activation_without_that_need(tmp_path, capsys):
    assert main(["validate", _sweep(tmp_path, 'policy: mask, mask: "101", insert_act: pwlu')]) == 0
    assert main(["validate", _sweep(tmp_path, "policy: all")]) == 0  # all: the eligible sites only
    assert main(["validate", _sweep(tmp_path, 'policy: mask, mask: "001"', "insert_act: [pwlu, la_silu]")]) == 0
    capsys.readouterr()


def test_points_to_evaluate_count_only_eligible_sites_for_lslu(tmp_path, capsys):
    from search_spaces.schema import load_sweep

    sweep = load_sweep(
        _sweep(
            tmp_path, "seed: 0", "mask: {type: sites}", ", points_to_evaluate: [{policy: all}, {policy: first_k, k: 2}]"
        )
    )
    assert [{k: v for k, v in p.items() if k.startswith("site_")} for p in sweep.points] == [
        {"site_0": 1, "site_1": 1, "site_2": 0},
        {"site_0": 1, "site_1": 1, "site_2": 0},
    ]
    bad = _sweep(tmp_path, "seed: 0", "mask: {type: sites}", ", points_to_evaluate: [{policy: last_k, k: 1}]")
    assert main(["validate", bad]) == 2
    err = capsys.readouterr().err
    assert "search.points_to_evaluate[0]" in err and "head.1 (no spatial map: layout flat)" in err


def test_sites_marks_what_lslu_gets_and_notes_an_ineligible_choice(capsys):
    assert main(["sites", FLAT_HEAD]) == 0
    out = capsys.readouterr().out
    assert f"{FLAT_HEAD}: 3 sites; all selects 2" in out and "mask: 110" in out
    assert main(["sites", FLAT_HEAD, "--policy", "stages:3"]) == 0
    out = capsys.readouterr().out
    assert "mask: 001" in out and "note:" in out and "head.1 (no spatial map: layout flat)" in out


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_project"


def test_the_example_project_validates_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # neither the project nor the example folder: runtime_env's working_dir finds it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != EXAMPLE])
    for name in [m for m in sys.modules if m.split(".")[0] == "my_project"]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["validate", str(EXAMPLE / "sweep.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ok (" in out and "the mask spans 5 sites" in out


def test_sites_of_the_example_network_show_its_layouts_and_the_functional_relu(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    assert main(["sites", "my_project.nets:build"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert [r["layout"] for r in rows] == ["nchw", "nchw", "nhwc", "nchw", "nhwc"]
    assert [r["path"] for r in rows if r["layout"] == "nhwc"] == ["stages.0.blocks.0.mlp.1", "stages.1.blocks.0.mlp.1"]
    assert all(r["eligible"] for r in rows) and len({r["stage"] for r in rows}) == 3
    assert "functional activation calls: 1 (relu 1;" in out


def test_the_program_imports_the_users_package_from_the_working_directory():
    """The README's `cd examples/my_project && lslu-sweep sites my_project.nets:build`: the program (not main in
    this process) finds the package in the folder it runs in, as `python -m` would."""
    program = Path(sys.executable).with_name("lslu-sweep")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(program), "sites", "my_project.nets:build"], cwd=EXAMPLE, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "my_project.nets:build: 5 sites" in done.stdout
