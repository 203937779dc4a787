"""benchmarks/device_bundle.py and on_device.sh, without a GPU or the network: a wheel the test writes is laid out as
pip lays it out, stripped and archived; on_device.sh unpacks the archive, puts it on PYTHONPATH, runs the command
and keeps its log and its exit status."""

import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from benchmarks import device_bundle

ROOT = Path(__file__).resolve().parents[1]
JAR = b"x" * 1000


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("lslu_probe/__init__.py", "VALUE = 42\n")
        tool = zipfile.ZipInfo("lslu_probe/bin/tool")
        tool.external_attr = (stat.S_IFREG | 0o755) << 16  # an executable, as ray/core's raylet and gcs_server are
        zf.writestr(tool, "#!/bin/sh\necho tool ran\n")
        zf.writestr("lslu_probe/tests/test_probe.py", "")
        zf.writestr("lslu_probe-1.0.data/purelib/lslu_probe_extra.py", "EXTRA = 1\n")
        zf.writestr("lslu_probe-1.0.data/scripts/probe", "#!/bin/sh\n")
        zf.writestr("ray/jars/ray.jar", JAR)
        zf.writestr("google/__init__.py", "")  # would hide the image's google.protobuf
        zf.writestr("lslu_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: lslu-probe\nVersion: 1.0\n")
    return path


def test_bundle_lays_out_strips_and_archives_the_wheels(tmp_path):
    archive = tmp_path / "site.tar.xz"
    unpacked, removed = device_bundle.bundle(
        [_wheel(tmp_path / "lslu_probe-1.0-py3-none-any.whl")], archive, "python 3.12"
    )
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        listing = tar.extractfile("DEVICE_BUNDLE.txt").read().decode()
    assert set(members) == {
        "lslu_probe/__init__.py",
        "lslu_probe/bin/tool",
        "lslu_probe_extra.py",
        "lslu_probe-1.0.dist-info/METADATA",
        "DEVICE_BUNDLE.txt",
    }
    assert members["lslu_probe/bin/tool"].mode & stat.S_IXUSR
    assert not members["lslu_probe/__init__.py"].mode & stat.S_IXUSR
    assert listing == "python 3.12\nlslu_probe-1.0-py3-none-any.whl\n"
    assert removed == len(JAR) and unpacked > removed
    assert not archive.with_name("site.tar.xz.part").exists()


def test_on_device_runs_the_command_on_the_unpacked_site(tmp_path):
    archive = tmp_path / "site.tar.xz"
    device_bundle.bundle([_wheel(tmp_path / "lslu_probe-1.0-py3-none-any.whl")], archive, "python 3.11")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "ARCHIVE": str(archive),
        "SITE": str(tmp_path / "site"),
        "OUT": str(out),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }  # python3: this venv's (Ray & co.)
    command = (
        "import sys, lslu_probe, lslu_probe_extra; "
        "print('probe', lslu_probe.VALUE + lslu_probe_extra.EXTRA); sys.exit(5)"
    )
    done = subprocess.run(
        ["bash", "benchmarks/on_device.sh", "python3", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 5, done.stdout + done.stderr  # the command's own status
    log = (out / "log.txt").read_text()
    assert "imports ok" in log and "probe 43" in log and "requirements met" in log
    assert os.access(tmp_path / "site" / "lslu_probe" / "bin" / "tool", os.X_OK)

    env["ARCHIVE"] = str(tmp_path / "absent.tar.xz")
    missing = subprocess.run(
        ["bash", "benchmarks/on_device.sh", "true"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert missing.returncode == 3 and "carry .devicepkgs" in missing.stdout
