"""Sweep files: the presets validate; each kind of bad file is refused with the file and key named, exit 2."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from search_spaces.schema import PRESET_DIR, load_sweep, parse_sweep

GOOD = """
name: tiny
trial: {epochs: 2, n: 1}
space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  mask: {type: sites}
search: {num_samples: 2, grace_period: 1}
"""


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESET_DIR.glob("*.yaml")))
def test_presets_validate_and_begin_with_their_command(preset):
    sweep = load_sweep(str(PRESET_DIR / preset))
    first_line = (PRESET_DIR / preset).read_text().splitlines()[0]
    assert first_line.startswith("# lslu-sweep run ") and preset in first_line
    assert sweep.spec.search.num_samples >= 1


def test_quickstart_searches_what_the_issue_asks():
    sweep = load_sweep("quickstart")
    assert {"n", "dropout", "lr", "mask"} <= set(sweep.spec.space)
    assert (sweep.spec.search.algorithm, sweep.spec.search.scheduler, sweep.spec.search.num_samples) == (
        "tpe",
        "asha",
        8,
    )
    assert sweep.site_count == 4


def test_a_good_file_validates(tmp_path, capsys):
    assert main(["validate", str(_write(tmp_path, GOOD))]) == 0
    assert "the mask spans 4 sites" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, searching",
    [
        ("name: x\ntrial: {policy: stages}\nspace: {stages: ['1', '2,3']}\n", "stages"),
        (
            "name: x\nspace: {policy: [all, stages], "
            "stages: {type: categorical, choices: ['1', '3'], when: {policy: stages}}}\n",
            "policy, stages",
        ),
        (
            "name: x\nspace: {policy: [none, last_k], k: {type: int, low: 1, high: 4, when: {policy: last_k}}}\n",
            "policy, k",
        ),
    ],
)
def test_a_searched_policy_argument_validates(tmp_path, capsys, text, searching):
    """A policy's argument may be searched while the policy is fixed, or searched under it."""
    assert main(["validate", str(_write(tmp_path, text))]) == 0
    assert f"searching {searching})" in capsys.readouterr().out


BAD = [
    ("unknown top-level section", "name: x\ntrials: {}\n", "trials: unknown key"),
    ("unknown trial key", "name: x\ntrial: {epochz: 3}\n", "trial.epochz: unknown key"),
    ("wrong type", "name: x\ntrial: {epochs: ten}\n", "trial.epochs: "),
    (
        "unknown model",
        "name: x\ntrial: {model: resnet9000}\n",
        "trial.model: unknown model 'resnet9000'; valid choices: digits_cnn",
    ),
    ("unknown activation", "name: x\ntrial: {insert_act: swish9}\n", "trial.insert_act: unknown activation"),
    (
        "unknown activation among choices",
        "name: x\nspace: {act: [relu, tanhh]}\n",
        "space.act.choices[1]: unknown activation 'tanhh'",
    ),
    (
        "range upside down",
        "name: x\nspace: {lr: {type: float, low: 0.1, high: 0.01}}\n",
        "space.lr.low: must not exceed high",
    ),
    (
        "log range through zero",
        "name: x\nspace: {lr: {type: float, low: 0, high: 0.1, log: true}}\n",
        "space.lr.low: a log-scaled range needs low > 0",
    ),
    (
        "range edge out of bounds",
        "name: x\nspace: {dropout: {type: float, low: 0.0, high: 1.5}}\n",
        "space.dropout.high: ",
    ),
    (
        "unknown distribution type",
        "name: x\nspace: {n: {type: normal, low: 1, high: 3}}\n",
        "space.n: expected a distribution",
    ),
    ("unknown distribution key", "name: x\nspace: {n: {type: int, low: 1, hi: 3}}\n", "space.n.hi: unknown key"),
    ("searched key not in config", "name: x\nspace: {depth: [1, 2]}\n", "space.depth: not a trial config key"),
    ("key fixed and searched", "name: x\ntrial: {n: 2}\nspace: {n: [1, 2]}\n", "space.n: also fixed in trial.n"),
    (
        "sites on another key",
        "name: x\nspace: {n: {type: sites}}\n",
        "space.n: type 'sites' is only valid for the key 'mask'",
    ),
    (
        "sites with a fixed non-mask policy",
        "name: x\ntrial: {policy: all}\nspace: {mask: {type: sites}}\n",
        "trial.policy: the space searches the mask",
    ),
    (
        "a default the searched value does not go with",
        "name: x\ntrial: {epochs: 2}\nspace: {insert_act: [lslu, pwlu]}\n",
        "space.insert_act.choices[1]: with insert_act = 'pwlu', trial.pwlu_warmup_epochs (its default): "
        "must be below epochs (2)",
    ),
    (
        "fixed mask of the wrong length",
        "name: x\ntrial: {policy: mask, mask: '010'}\n",
        "trial.mask: mask '010' has 3 bits but the model has 4 activation sites (digits_cnn)",
    ),
    (
        "fixed stage the model lacks",
        "name: x\ntrial: {policy: stages, stages: '7'}\n",
        "trial.stages: policy 'stages:7' names stage(s) [7]",
    ),
    (
        "fixed paths that match no site",
        "name: x\ntrial: {policy: paths, paths: 'stagez.*'}\n",
        "trial.paths: policy 'paths:stagez.*' matches none of the model's 4 sites (paths: stem.act, stages.0.act",
    ),
    (
        "searched k beyond the site count",
        "name: x\ntrial: {policy: last_k}\nspace: {k: {type: int, low: 1, high: 6}}\n",
        "space.k.high: policy 'last_k:6' asks for 6 sites; the model has 4",
    ),
    (
        "searched stage the model lacks",
        "name: x\ntrial: {policy: stages}\nspace: {stages: ['1', '9']}\n",
        "space.stages.choices[1]: policy 'stages:9' names stage(s) [9]",
    ),
    (
        "conditional k beyond the sites",
        "name: x\nspace: {policy: [all, last_k], k: {type: int, low: 1, high: 7, when: {policy: last_k}}}\n",
        "space.k.high: policy 'last_k:7' asks for 7 sites; the model has 4",
    ),
    (
        "searched policy whose paths match nothing",
        "name: x\ntrial: {paths: nope}\nspace: {policy: [all, paths]}\n",
        "space.policy.choices[1]: policy 'paths:nope' matches none of the model's 4 sites",
    ),
    (
        "unknown search key",
        "name: x\nsearch: {num_sample: 2}\n",
        "search.num_sample: unknown key; valid keys: algorithm, metric, mode, num_samples",
    ),
    ("unknown metric", "name: x\nsearch: {metric: accuracy}\n", "search.metric: unknown metric 'accuracy'"),
    ("unknown algorithm", "name: x\nsearch: {algorithm: bohb}\n", "search.algorithm: "),
    ("zero samples", "name: x\nsearch: {num_samples: 0}\n", "search.num_samples: "),
    ("negative gpu", "name: x\nresources: {gpu: -1}\n", "resources.gpu: "),
    (
        "grace period beyond epochs",
        "name: x\ntrial: {epochs: 2}\nsearch: {grace_period: 3}\n",
        "search.grace_period: must not exceed",
    ),
    ("bad name", "name: 'my sweep!'\n", "name: "),
    ("missing name", "trial: {}\n", "name: Field required"),
    ("not a mapping", "- a\n- b\n", "expected a mapping"),
    ("not YAML", "name: [x\n", "not valid YAML"),
]


@pytest.mark.parametrize("case, text, message", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_refused_naming_file_and_key(tmp_path, capsys, case, text, message):
    path = _write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ")
    assert message in err
    assert "Traceback" not in err


def test_run_refuses_before_ray_or_mlflow_start(tmp_path):
    """`lslu-sweep run` on a bad file exits 2 with one line, having imported neither Ray nor MLflow."""
    path = _write(tmp_path, "name: x\ntrial: {epochs: -1}\n")
    code = (
        "import sys; from orchestrator.cli import main; rc = main(['run', sys.argv[1]]); "
        "print('LOADED', 'ray' in sys.modules, 'mlflow' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    assert "trial.epochs: " in proc.stderr and "Traceback" not in proc.stderr
    assert "LOADED False False" in proc.stdout
    assert not (Path(tmp_path) / "mlruns.db").exists()


def test_missing_file_names_the_presets(capsys):
    assert main(["validate", "no_such_sweep"]) == 2
    err = capsys.readouterr().err
    assert "presets: " in err and "quickstart" in err and "insertion_resnet18" in err


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_the_smoke_form_keeps_searcher_and_space_and_shrinks_the_rest(preset):
    sweep = load_sweep(preset)
    smoke = sweep.shrunk()
    assert (
        smoke.spec.space == sweep.spec.space and smoke.objectives == sweep.objectives and smoke.points == sweep.points
    )
    assert (
        smoke.spec.search.algorithm == sweep.spec.search.algorithm
        and smoke.spec.search.max_sites == sweep.spec.search.max_sites
    )
    if sweep.spec.search.strategy == "oneshot":  # a short supernet, 16 masks scored, 2 retrained (its trials)
        s = smoke.spec.search
        assert (s.supernet_epochs, s.eval_masks, s.candidates, s.num_samples) == (2, 16, 2, 2)
    else:
        assert smoke.spec.search.num_samples == min(4, sweep.spec.search.num_samples)
    base = smoke.base
    assert base.dataset == "digits" and base.epochs <= 2 and base.image_size <= 32 and 16 <= base.train_samples <= 512
    # a wide VanillaNet trains at width 0.25 (same sites, narrower); a space with another model keeps the file's width
    models = sweep.spec.space["model"].choices if "model" in sweep.spec.space else [sweep.base.model]
    assert base.width == (0.25 if all(m.startswith("vanillanet") for m in models) else sweep.base.width)


def test_validate_smoke_test_describes_the_smoke_form_run_would_use(capsys):
    # table2 reads CIFAR-10 from data/, which is not here: validate refuses it, its smoke form trains on digits
    assert main(["validate", "table2_resnet18_cifar10"]) == 2
    assert "trial.data_dir: data_dir data: expected cifar-10-batches-py/" in capsys.readouterr().err
    assert main(["validate", "table2_resnet18_cifar10", "--smoke-test", "--set", "trial.epochs=50"]) == 0
    summary, smoke = capsys.readouterr().out.splitlines()
    shrunk = load_sweep("table2_resnet18_cifar10", ["trial.epochs=50"]).shrunk()
    assert summary.endswith(
        "table2_resnet18_cifar10.yaml: ok, as a smoke test (grid, 4 trials, best_val_acc (max), "
        "searching act, policy, seed)"
    )
    size = shrunk.base.image_size
    assert smoke.startswith(f"smoke test: dataset 'digits' (was 'cifar10'), image_size {size} (was 32)")
    assert "epochs 2 (was 50)" in smoke and "each trial on at most 1 CPU" in smoke


def test_the_smoke_form_keeps_a_users_data_whose_arguments_are_searched(tmp_path, monkeypatch):
    from tests.tiny_datasets import write_factory_package

    monkeypatch.syspath_prepend(str(write_factory_package(tmp_path, "smokedata")))
    text = textwrap.dedent("""
        name: own
        trial: {model: digits_cnn, dataset: "smokedata.data:build", image_size: 12, epochs: 3}
        space: {data_args.n: [24, 48], lr: [0.001, 0.01]}
    """)
    smoke = parse_sweep(yaml.safe_load(text), text, str(tmp_path / "own.yaml")).shrunk()
    assert smoke.base.dataset == "smokedata.data:build" and smoke.spec.space["data_args.n"].choices == [24, 48]
    assert smoke.base.epochs == 2 and smoke.spec.search.num_samples <= 4


def test_set_overrides_are_validated_like_the_file_and_recorded_in_its_source(capsys):
    sweep = load_sweep("quickstart", ["trial.epochs=3", "search.num_samples=5"])
    assert sweep.base.epochs == 3 and sweep.spec.search.num_samples == 5
    assert sweep.overrides == ("trial.epochs=3", "search.num_samples=5")
    assert sweep.source.startswith("# --set trial.epochs=3\n# --set search.num_samples=5\n")
    again = load_sweep("quickstart")  # the file itself is left as it was
    assert (
        again.base.epochs == 6
        and again.overrides == ()
        and again.source == (PRESET_DIR / "quickstart.yaml").read_text()
    )
    # the recorded source is the overridden file: parsed back, it is the same sweep (what resume starts from)
    reparsed = parse_sweep(yaml.safe_load(sweep.source), sweep.source, sweep.file)
    assert reparsed.base == sweep.base and reparsed.spec == sweep.spec
    # each refused naming the key and what was expected, before anything runs
    for items, message in (
        (["trial.epoch=2"], "trial.epoch: unknown key"),
        (["trial.epochs=two"], "trial.epochs: Input should be a valid integer"),
        (["trial"], "--set: expected KEY=VALUE"),
        (["name.x=1"], "name.x: --set cannot set a key inside name"),
        (["search.seed=[1"], "search.seed: --set value '[1' is not valid YAML"),
    ):
        assert main(["validate", "quickstart", *[a for item in items for a in ("--set", item)]]) == 2
        assert message in capsys.readouterr().err, items
    # an error at an overridden key says the value came from --set, not from the file
    assert main(["validate", "quickstart", "--set", "trial.epoch=2", "--set", "search.seed=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trial.epoch: unknown key" in err and err.endswith("did you mean epochs? (set by --set trial.epoch=2)")


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"lslu-sweep {version('lslu-sweep')}"


def test_max_failures_defaults_to_three_on_a_cluster_and_zero_on_the_local_ray():
    from orchestrator.driver import default_max_failures

    sweep = load_sweep("quickstart")
    assert sweep.spec.search.max_failures is None
    assert (default_max_failures(sweep, 1), default_max_failures(sweep, 3)) == (0, 3)
    fixed = load_sweep("quickstart", ["search.max_failures=1"])
    assert (default_max_failures(fixed, 1), default_max_failures(fixed, 3)) == (1, 1)


def test_presets_lists_every_preset_with_what_it_runs(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert [line.split()[0] for line in lines[:-1]] == names and "lslu-sweep run NAME" in lines[-1]
    quickstart = next(line for line in lines if line.startswith("quickstart "))
    assert "Which learnable activation" in quickstart  # the first sentence of the file's own description
