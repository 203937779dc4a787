"""Ray Tune's storage path as the driver handles it: paths and URIs alike, and finding a sweep to resume in it."""

import os

import pytest

from cluster import storage as st
from cluster.tracking import is_local_store
from orchestrator.experiments import MANIFEST, find_experiment


def test_paths_become_absolute_and_bucket_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.resolve_storage(None) == str(tmp_path / "ray_results")
    assert st.resolve_storage("runs/") == str(tmp_path / "runs")
    assert st.resolve_storage(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert st.resolve_storage("s3://bucket/sweeps/") == "s3://bucket/sweeps"
    assert st.join("s3://bucket/sweeps", "quickstart-1", MANIFEST) == f"s3://bucket/sweeps/quickstart-1/{MANIFEST}"


def test_text_round_trips_and_sweeps_are_found_newest_last(tmp_path):
    root = str(tmp_path / "storage")
    for name, mtime in (
        ("quick-20260101-000000", 100),
        ("quick-20260102-000000", 300),
        ("quickstart-20260101-000000", 200),
    ):
        st.write_text(st.join(root, name, MANIFEST), f'{{"name": "{name}"}}')
        os.utime(tmp_path / "storage" / name / MANIFEST, (mtime, mtime))
    (tmp_path / "storage" / "not-a-sweep").mkdir()
    assert st.read_text(st.join(root, "quick-20260101-000000", MANIFEST)) == '{"name": "quick-20260101-000000"}'
    assert [n for n, _ in st.dirs_holding(root, MANIFEST)] == [
        "quick-20260101-000000",
        "quickstart-20260101-000000",
        "quick-20260102-000000",
    ]
    assert find_experiment("quick", root) == st.join(root, "quick-20260102-000000")  # the newest of that sweep
    assert find_experiment("quickstart", root) == st.join(root, "quickstart-20260101-000000")
    assert find_experiment("quick-20260101-000000", root) == st.join(root, "quick-20260101-000000")  # an exact name
    with pytest.raises(FileNotFoundError, match="no sweep 'other' under .*; sweeps there: quick-20260101-000000, "):
        find_experiment("other", root)
    st.delete_file(st.join(root, "quick-20260101-000000", MANIFEST))
    st.delete_file(st.join(root, "quick-20260101-000000", MANIFEST))  # already gone: no error
    assert "quick-20260101-000000" not in [n for n, _ in st.dirs_holding(root, MANIFEST)]
    assert st.dirs_holding(str(tmp_path / "nowhere"), MANIFEST) == []


def test_which_tracking_stores_are_local(tmp_path):
    assert is_local_store(f"sqlite:///{tmp_path}/mlruns.db") and is_local_store(tmp_path.as_uri())
    assert is_local_store("mlruns")
    assert not is_local_store("http://mlflow:5000") and not is_local_store("postgresql://db/mlflow")
