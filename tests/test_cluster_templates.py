"""The deployment templates in cluster/templates and cluster/mlflow_server.sh: they parse, hold what their platform
requires, agree with the installed Ray and MLflow and with the CLI's options, and hold no secrets or local paths."""

import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import ray
import yaml

from orchestrator.cli import _parser

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "cluster" / "templates"
SCRIPT = REPO / "cluster" / "mlflow_server.sh"
ALL = sorted(p for p in TEMPLATES.iterdir() if p.is_file()) + [SCRIPT]


def _yaml(name):
    return yaml.safe_load((TEMPLATES / name).read_text())


def _parses_as_cli(command: str) -> None:
    """``lslu-sweep …`` as the CLI parses it (argparse exits on an unknown option)."""
    words = shlex.split(command)
    _parser().parse_args(words[words.index("lslu-sweep") + 1 :])


def _groups(spec):
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name,kind", [("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    doc = _yaml(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == ray.__version__  # the Ray every node runs is the driver's
    images = set()
    for group, g in _groups(spec):
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), group  # KubeRay takes strings only
        (container,) = g["template"]["spec"]["containers"]
        images.add(container["image"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://"), group  # a server, never a local store
        assert container["resources"]["limits"] == container["resources"]["requests"], group
    assert images == {"REGISTRY/lslu-sweep:0.1.0"}  # the image cluster/templates/Dockerfile builds
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert gpu_groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu_groups)
    if kind == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        _parses_as_cli(doc["spec"]["entrypoint"])
        assert "--storage s3://" in doc["spec"]["entrypoint"]  # pods share no filesystem: checkpoints go to a bucket


def test_dockerfile_builds_on_the_installed_ray():
    text = (TEMPLATES / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    for package in ("trainables", "orchestrator", "search_spaces", "cluster", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(package)}\b", text, re.M), package
        assert f"!{package}" in (TEMPLATES / "Dockerfile.dockerignore").read_text()
    assert "pip install" in text and "-t REGISTRY/lslu-sweep:0.1.0" in text


def test_slurm_script():
    path = TEMPLATES / "slurm-ray.sbatch"
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = path.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert int(directives["nodes"]) >= 2 and directives["ntasks-per-node"] == "1" and "gpus-per-node" in directives
    assert re.search(r"ray start --head .*--port=6379 .*--block", text)
    assert re.search(r'ray start --address="\$address" .*--block', text)
    assert ': "${MLFLOW_TRACKING_URI:?' in text and ': "${LSLU_STORAGE:?' in text  # refuses to start without them
    (driver,) = re.findall(r'^lslu-sweep "\$\{command\[@\]\}" (.*)$', text, re.M)
    for command in (["run", "sweep.yaml"], ["resume", "sweep"]):  # both forms the script runs
        _parser().parse_args(command + shlex.split(driver.replace('"$', '"X')))


def test_aws_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _yaml("aws-gpu.yaml")
    validate_config(prepare_config(raw))  # the schema and checks `ray up` applies
    assert raw["provider"]["type"] == "aws"
    workers = [t for name, t in raw["available_node_types"].items() if name != raw["head_node_type"]]
    assert workers and all(re.match(r"(g|p)\d", t["node_config"]["InstanceType"]) for t in workers)  # GPU families
    assert any("pip install -e ~/lslu-sweep" in c for c in raw["setup_commands"])
    assert raw["file_mounts"] == {"~/lslu-sweep": "."}
    (command,) = re.findall(
        r'ray exec \S+ "cd lslu-sweep && (lslu-sweep run [^"]+)"', (TEMPLATES / "aws-gpu.yaml").read_text()
    )
    _parses_as_cli(command)
    assert "--storage s3://" in command


def test_compose_file_runs_the_server_script_on_postgres():
    doc = _yaml("mlflow-compose.yaml")
    services = doc["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    mlflow = services["mlflow"]
    assert mlflow["image"] == f"ghcr.io/mlflow/mlflow:v{version('mlflow')}"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:${POSTGRES_PASSWORD")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    (mount,) = mlflow["volumes"]
    source, target = mount.split(":")[:2]
    assert (TEMPLATES / source).resolve() == SCRIPT and target in mlflow["command"][-1]
    assert "--host 0.0.0.0" in mlflow["command"][-1]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(doc["volumes"]) == {
        v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")
    }


def test_every_template_has_a_readme_section_with_its_command():
    readme = (REPO / "README.md").read_text()
    for path in ALL:
        if path.suffix != ".dockerignore":
            assert f"cluster/{path.relative_to(REPO / 'cluster')}" in readme, path.name


# a key naming a credential, with a value on the same line: `KEY: value`, `KEY=value`, `--from-literal=KEY=value`
SECRET_KEY = re.compile(
    r"(?im)(?:^|[\s,=])[\"']?(\w*(?:password|secret|token|access_key)\w*)[\"']?"
    r"[ \t]*[:=][ \t]*(\S+)"
)
URI_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


PLACEHOLDER = re.compile(r"""^["']?(\$|\.\.\.|[A-Z_]+@?$)""")  # $VAR / ${VAR…} / ... / CAPITALIZED


def _literal_credentials(text: str) -> list[str]:
    found = [m.group(0) for m in SECRET_KEY.finditer(text) if not PLACEHOLDER.match(m.group(2))]
    return found + [m.group(0) for m in URI_PASSWORD.finditer(text) if not PLACEHOLDER.match(m.group(1))]


def test_the_credential_scan_tells_placeholders_from_values():
    assert (
        _literal_credentials(
            "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}\n  secretRef:\n    name: x\n"
            "--from-literal=AWS_SECRET_ACCESS_KEY=... postgresql://USER:PASSWORD@HOST/db"
        )
        == []
    )
    assert (
        len(
            _literal_credentials(
                "POSTGRES_PASSWORD: s3cr3t\nexport RAY_AUTH_TOKEN=abc123\nuri: postgresql://mlflow:pw@db:5432/mlflow"
            )
        )
        == 3
    )


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_templates_hold_no_secrets_or_paths_of_this_machine(path):
    text = path.read_text()
    for local in (str(REPO.parent), str(Path.home()), "/tmp/"):  # this checkout, its folder, this user
        assert local not in text, local
    assert _literal_credentials(text) == []


def test_server_script_refuses_a_missing_or_local_backend(tmp_path):
    def run(*args, **env):
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", **env},
        )

    missing = run()
    assert missing.returncode == 2 and "set MLFLOW_BACKEND_STORE_URI" in missing.stderr
    local = run(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path}/m.db")
    assert local.returncode == 2 and "must be PostgreSQL" in local.stderr
    assert run("--bogus").returncode == 2
    assert run("--help").returncode == 0


def test_server_script_starts_mlflow_with_proxied_artifacts_on_loopback(tmp_path):
    """With ``echo`` as the mlflow binary the script prints the command it would run (the real start is in
    test_multinode)."""
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "MLFLOW_BIN": "echo",
            "MLFLOW_BACKEND_STORE_URI": "postgresql://sweeper:not-a-secret@db.internal:5432/mlflow",
        },
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "server",
        "--backend-store-uri",
        "postgresql://sweeper:not-a-secret@db.internal:5432/mlflow",
        "--serve-artifacts",
        "--artifacts-destination",
        "./mlartifacts",
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
        "--workers",
        "1",
    ]
    # the banner hides it
    assert "not-a-secret" not in out.stderr and "postgresql://db.internal:5432/mlflow" in out.stderr
    wide = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--host",
            "0.0.0.0",
            "--allowed-hosts",
            "mlflow.internal:5000",
            "--",
            "--static-prefix",
            "/mlflow",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_BIN": "echo", "MLFLOW_BACKEND_STORE_URI": "postgresql://db/mlflow"},
    )
    words = wide.stdout.split()
    assert words[words.index("--host") + 1] == "0.0.0.0" and words[-4:] == [
        "--allowed-hosts",
        "mlflow.internal:5000",
        "--static-prefix",
        "/mlflow",
    ]
