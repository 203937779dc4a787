"""Validation reports every error of a sweep file at once, each with its key path, in the file's terms (did you mean
for a misspelt key or name), and warns where a valid file's values do nothing (DESIGN.md §6)."""

import pickle
import textwrap

import pytest

from orchestrator.cli import main
from search_spaces.schema import PRESET_DIR, SpecError, SpecErrors, load_sweep


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _errors(capsys, path) -> list[str]:
    """The error lines of one `lslu-sweep validate`, checked to exit 2 without a traceback."""
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith(f"error: {path}: ") for line in lines), err
    return [line.removeprefix(f"error: {path}: ") for line in lines]


FOUR_MISTAKES = """
name: four
trial: {epochs: 3}
space:
  lr: 0.01
  dropout: {type: float, low: 0.0, high: 0.3}
search:
  num_sampels: 4
  metric: val_accc
resources: {cpu: -1}
"""


def test_four_mistakes_are_four_errors_from_one_validate(tmp_path, capsys):
    errors = _errors(capsys, _write(tmp_path, FOUR_MISTAKES))
    assert len(errors) == 4, errors
    by_key = {e.split(": ", 1)[0]: e.split(": ", 1)[1] for e in errors}
    assert set(by_key) == {"search.num_sampels", "space.lr", "search.metric", "resources.cpu"}
    assert by_key["search.num_sampels"].startswith("unknown key; valid keys: algorithm, metric")
    assert by_key["search.num_sampels"].endswith("; did you mean num_samples?")
    assert by_key["space.lr"] == (
        "expected a distribution (a mapping with type int, float, categorical or sites) or a list of choices; "
        "got 0.01 — a fixed value belongs in trial: (trial: {lr: 0.01})"
    )
    assert "unknown metric 'val_accc'" in by_key["search.metric"] and "did you mean val_acc" in by_key["search.metric"]
    assert by_key["resources.cpu"] == "Input should be greater than 0 (got -1)"


def test_each_check_group_reports_its_own_error(tmp_path, capsys):
    """No pydantic error: the space, the objectives, the search section and the points are checked each."""
    errors = _errors(
        capsys,
        _write(
            tmp_path,
            """
            name: groups
            trial: {epochs: 2}
            space:
              dropout: {type: float, low: 0.3, high: 0.1}
            search:
              metric: accuracy
              grace_period: 3
              points_to_evaluate: [{lr: 0.01}]
            """,
        ),
    )
    keys = [e.split(": ", 1)[0] for e in errors]
    assert keys == ["space.dropout.low", "search.metric", "search.grace_period", "search.points_to_evaluate[0].lr"]


def test_a_group_that_needs_a_failed_one_or_a_dropped_value_is_skipped(tmp_path, capsys):
    # the trial config does not resolve: the checks that need it are skipped, the objectives are still checked
    errors = _errors(
        capsys, _write(tmp_path, "name: x\ntrial: {epochz: 3}\nspace: {n: [1, 2]}\nsearch: {metric: best_val_ac}\n")
    )
    assert [e.split(": ", 1)[0] for e in errors] == ["trial.epochz", "search.metric"]
    assert errors[0].endswith("; did you mean epochs?") and "; did you mean best_val_acc" in errors[1]
    # a misspelt algorithm is not judged as the default tpe (which has no generations): one error, not two
    errors = _errors(capsys, _write(tmp_path, "name: x\nsearch: {algorithm: nsga-2, population_size: 8}\n"))
    assert errors == ["search.algorithm: expected one of tpe, nsga2, random, grid; got 'nsga-2'; did you mean nsga2?"]


@pytest.mark.parametrize("algorithm, given", [("algorithm: tpe, ", ""), ("", " (the default)")])
def test_tpe_with_several_metrics_is_refused_naming_the_algorithm(tmp_path, capsys, algorithm, given):
    # DESIGN.md §6: TPE searches one objective, NSGA-II several; the metrics' own errors are still reported beside it
    text = f"name: x\ntrial: {{epochs: 2}}\nsearch: {{{algorithm}metric: [best_val_acc, latency_ms, val_accc]}}\n"
    errors = _errors(capsys, _write(tmp_path, text))
    assert [e.split(": ", 1)[0] for e in errors] == ["search.metric[2]", "search.algorithm"]
    assert errors[1] == (
        f"search.algorithm: tpe{given} searches one metric; this sweep has 3 (best_val_acc, latency_ms, val_accc); "
        "use nsga2 for several objectives (or random), or give search.metric one metric"
    )
    for search in ("{algorithm: tpe, metric: [best_val_acc]}", "{algorithm: nsga2, metric: [val_acc, latency_ms]}"):
        assert main(["validate", str(_write(tmp_path, f"name: x\ntrial: {{epochs: 2}}\nsearch: {search}\n"))]) == 0


def test_pydantic_messages_say_what_was_expected(tmp_path, capsys):
    errors = _errors(
        capsys,
        _write(
            tmp_path,
            """
            name: x
            space:
              n: {type: int, low: 1, hi: 3}
              lr: {type: floatt, low: 0.001, high: 0.01}
              dropout: {low: 0.0, high: 0.3}
            search: {metric: 5, num_samples: ten}
            """,
        ),
    )
    assert errors[0] == "space.n.hi: unknown key; valid keys: when, type, low, high, step, log; did you mean high?"
    assert not any(e.startswith("space.n.high") for e in errors)  # the misspelt key's did-you-mean says it
    assert errors[1:] == [
        "space.lr: expected a distribution (a mapping with type int, float, categorical or sites) or a list of "
        "choices; got type 'floatt'; did you mean float?",
        "space.dropout: expected a distribution (a mapping with type int, float, categorical or sites) or a list "
        "of choices; this mapping has no type",
        "search.metric: Input should be a valid string, or a valid list (got 5)",  # the union's alternatives, once
        "search.num_samples: Input should be a valid integer, unable to parse string as an integer (got 'ten')",
    ]


def test_spec_errors_keep_the_first_error_and_pickle(tmp_path):
    with pytest.raises(SpecErrors) as refused:
        load_sweep(str(_write(tmp_path, FOUR_MISTAKES)))
    exc = refused.value
    assert isinstance(exc, SpecError) and len(exc.errors) == 4
    first = exc.errors[0]
    assert (exc.file, exc.key, exc.message) == (first.file, first.key, first.message)
    assert str(exc).splitlines() == [str(e) for e in exc.errors]
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is SpecErrors and str(again) == str(exc)
    assert [(e.file, e.key, e.message) for e in again.errors] == [(e.file, e.key, e.message) for e in exc.errors]
    # one error is raised as itself, as before
    with pytest.raises(SpecError) as one:
        load_sweep(str(_write(tmp_path, "name: x\nsearch: {metric: accuracy}\n")))
    assert type(one.value) is SpecError and one.value.key == "search.metric"


WARNED = [
    (
        "LSLU with n = 0 under a policy",
        "trial: {n: 0, policy: downsampling}\nspace: {lr: {type: float, low: 1.0e-3, high: 1.0e-2}}\n",
        "trial.n: LSLU with n = 0 is no LSLU: policy downsampling selects sites, but each keeps relu and nothing "
        "learnable is inserted",
    ),
    (
        "an empty space",
        "search: {num_samples: 8}\n",
        "space: empty, so the 8 trials are one config trained 8 times (same seed)",
    ),
    (
        "one value per searched key",
        "space: {act: [silu]}\nsearch: {num_samples: 3}\n",
        "space: one value per searched key, so the 3 trials are one config trained 3 times",
    ),
    (
        "a mask that selects no site",
        "trial: {policy: mask, mask: '0000'}\nspace: {lr: [0.001, 0.01]}\n",
        "trial.mask: policy mask:0000 selects none of the 4 sites of digits_cnn: nothing is inserted",
    ),
    (
        "a searched policy's choice that selects no site",
        "trial: {mask: '0000'}\nspace: {policy: [all, mask]}\n",
        "space.policy.choices[1]: policy mask:0000 selects none of the 4 sites",
    ),
]


@pytest.mark.parametrize("case, text, warning", WARNED, ids=[w[0] for w in WARNED])
def test_a_config_that_does_nothing_is_a_warning(tmp_path, capsys, case, text, warning):
    path = _write(tmp_path, "name: x\n" + text)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: ok" in out
    warnings = err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path}: {warning}"), err


@pytest.mark.parametrize(
    "choice, message",
    [
        ("'stages:1'", "unknown policy 'stages:1'; valid choices: none, all, downsampling, stages"),
        ("stages", "with policy = 'stages', trial.stages (its default): policy 'stages' needs comma-separated"),
    ],
)
def test_a_searched_policy_that_is_no_policy_is_an_error_not_a_traceback(tmp_path, capsys, choice, message):
    path = _write(tmp_path, f"name: x\nspace: {{policy: [none, downsampling, {choice}]}}\n")
    errors = _errors(capsys, path)
    assert len(errors) == 1 and errors[0].startswith(f"space.policy.choices[2]: {message}"), errors


def test_run_sweep_from_python_says_the_warnings_first(tmp_path):
    """The Python API's run_sweep says what validate warns of, through its echo, before Ray or a store is touched
    (a bad --optuna-storage URL is refused next, so nothing starts)."""
    from cluster.preflight import ClusterError
    from orchestrator.driver import run_sweep

    path = _write(tmp_path, "name: x\n" + WARNED[0][1])
    lines = []
    with pytest.raises(ClusterError, match="optuna-storage"):
        run_sweep(load_sweep(path), tracking_uri=f"sqlite:///{tmp_path}/m.db", optuna_storage="::", echo=lines.append)
    assert lines == [f"warning: {path}: {w}" for w in load_sweep(path).warnings] and WARNED[0][2] in lines[0]
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize(
    "text",
    [
        "trial: {n: 0, policy: none}\nspace: {lr: [0.001, 0.01]}\n",  # the baseline, asked for
        "trial: {policy: downsampling}\nspace: {n: {type: int, low: 0, high: 3}}\n",  # n = 0 is one choice
        "trial: {n: 0}\nspace: {insert_act: [lslu, pwlu]}\n",  # pwlu inserts
        "search: {num_samples: 1}\n",  # one trial of one config
    ],
)
def test_a_config_that_does_something_has_no_warning(tmp_path, capsys, text):
    path = _write(tmp_path, "name: x\n" + text)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_no_preset_has_a_warning():
    assert {p.stem: load_sweep(str(p)).warnings for p in PRESET_DIR.glob("*.yaml")} == {
        p.stem: [] for p in PRESET_DIR.glob("*.yaml")
    }


MANY_BAD_VALUES = """
name: many
trial: {model: digits_cnn, dataset: digits, epochs: -3, batch_size: big, act: relux, granularity: pixel}
space:
  n: {type: int, low: 5, high: 1}
  dropout: {type: float, low: 0.0, high: 1.5}
  lr: {type: float, low: 0.001, high: 0.01}
search:
  num_samples: 2
  points_to_evaluate: [{lr: 0.5}, {momentum: 0.9}, {lr: 0.005}]
"""


def test_every_bad_trial_value_space_key_and_point_from_one_validate(tmp_path, capsys):
    """Each check group goes on past its first error: four bad trial values (each falling back to its default for
    the rest), two bad searched keys and two bad points are eight errors at once, each at its own key path."""
    errors = _errors(capsys, _write(tmp_path, MANY_BAD_VALUES))
    by_key = {e.split(": ", 1)[0]: e.split(": ", 1)[1] for e in errors}
    assert len(errors) == len(by_key) == 8, errors
    assert set(by_key) == {
        "trial.epochs",
        "trial.batch_size",
        "trial.act",
        "trial.granularity",
        "space.n.low",
        "space.dropout.high",
        "search.points_to_evaluate[0].lr",
        "search.points_to_evaluate[1].momentum",
    }
    assert by_key["space.n.low"] == "must not exceed high (1), got 5"
    assert by_key["trial.act"].startswith("unknown activation 'relux'")
    assert by_key["search.points_to_evaluate[1].momentum"] == "not a searched key; searched: n, dropout, lr"


def test_a_misspelt_searched_key_hides_no_other_key_in_the_space(tmp_path, capsys):
    text = """
    name: x
    space:
      insert_act: [lslu, pwlu]
      n: {type: int, low: 1, high: 3, when: {insert_actt: lslu}}
      lr: {type: floatt, low: 0.001, high: 0.01}
    """
    keys = [e.split(": ", 1)[0] for e in _errors(capsys, _write(tmp_path, text))]
    assert keys == ["space.lr", "space.n.when.insert_actt"]


def test_several_errors_of_one_group_pickle_as_one(tmp_path):
    with pytest.raises(SpecErrors) as refused:
        load_sweep(_write(tmp_path, MANY_BAD_VALUES))
    again = pickle.loads(pickle.dumps(refused.value))
    assert [e.key for e in again.errors] == [e.key for e in refused.value.errors] and len(again.errors) == 8
    assert (again.file, again.key, again.message) == (refused.value.file, refused.value.key, refused.value.message)
