"""A finished quickstart sweep seen in a real browser: headless Chromium on the MLflow UI that ``lslu-sweep ui`` serves.

Chromium loads each page until the React app has fetched what it shows (``--virtual-time-budget`` does not
advance while requests are pending), then writes the DOM and a screenshot. Screenshots go to
``$LSLU_SWEEP_SCREENSHOTS`` when set (kept), else to the test's temporary directory.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.tracking import MlflowClient

from cluster.ui_server import UiServer, free_port
from orchestrator.driver import run_sweep
from orchestrator.ui import artifact_url, sweep_url
from search_spaces.schema import load_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed: `make test` installs "
        "Debian's chromium where apt works (apt-get install chromium)",
    ),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1920,1080",
    "--virtual-time-budget=20000",
]
TRIAL_FIGURES = ("theta_omega.png", "learning_curves.png", "sites.png")


@pytest.fixture(scope="module")
def sweep_store(ray_local, tmp_path_factory):
    work = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    outcome = run_sweep(
        load_sweep("quickstart"), tracking_uri=uri, storage=str(work / "ray"), smoke_test=True, echo=lambda text: None
    )
    assert outcome.best is not None
    return uri, outcome


def _browse(url: str, screenshot: Path, profile: Path) -> str:
    """The page's DOM once the app has loaded it; a screenshot of it on the way."""
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    image = matplotlib.image.imread(screenshot)
    assert image.shape[:2] == (1080, 1920) and image[..., :3].std() > 0.05, f"{screenshot} is blank"
    return done.stdout


def _loaded_images(dom: str) -> set[str]:
    """Artifact images the app fetched and shows (it renders them from blob: URLs)."""
    return {
        alt
        for tag in re.findall(r"<img\b[^>]*>", dom)
        for alt in re.findall(r'alt="([^"]+)"', tag)
        if re.search(r'src="blob:', tag)
    }


def test_the_browser_shows_the_sweeps_trials_and_a_trials_figures(sweep_store, tmp_path):
    uri, outcome = sweep_store
    shots = Path(os.environ.get("LSLU_SWEEP_SCREENSHOTS") or tmp_path / "screens")
    shots.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    parent = client.get_run(outcome.context.parent_run_id)
    exp_id, best_id = parent.info.experiment_id, parent.data.tags["best_trial_run_id"]
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4

    with UiServer(uri, free_port(), log=tmp_path / "mlflow-ui.log") as ui:
        # the sweep's view: every trial by name, with the searched values and the metric as columns
        dom = _browse(sweep_url(ui.url, exp_id, parent.info.run_name), shots / "sweep_trials.png", tmp_path / "profile")
        for child in children:
            assert child.info.run_name in dom, f"trial run {child.info.run_name} missing from the sweep view"
        headers = set(re.findall(r'col-id="([^"]+)"', dom))
        assert {"metrics.`best_val_acc`", "params.`mask`", "params.`lr`"} <= headers, sorted(headers)

        # the best trial's artifact page: the θ/ω figure shown, and the trial's other artifacts listed
        dom = _browse(artifact_url(ui.url, exp_id, best_id), shots / "best_trial_theta_omega.png", tmp_path / "profile")
        assert "theta_omega.png" in _loaded_images(dom)
        for name in ("config.yaml", "sites.csv", "theta_omega.csv", *TRIAL_FIGURES):
            assert name in dom, f"{name} missing from the artifact listing"
        best_name = client.get_run(best_id).info.run_name
        assert best_name in dom

        # the sweep's own figure on the parent run
        dom = _browse(
            artifact_url(ui.url, exp_id, parent.info.run_id, "parallel_coordinates.png"),
            shots / "sweep_parallel_coordinates.png",
            tmp_path / "profile",
        )
        assert "parallel_coordinates.png" in _loaded_images(dom)
        assert "results.csv" in dom and "best_config.yaml" in dom
    print(f"screenshots in {shots}")
