"""Ray Tune's storage path: a local or shared directory, or a bucket (``s3://…``, ``gs://…``).

Trials write their checkpoints there from whichever node they run on, and a trial retried on another
node reads them back, so on a cluster every node must see the same storage. Paths and URIs are handled
alike through pyarrow's filesystems (what Ray Tune itself uses).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

DEFAULT_STORAGE = "ray_results"


def is_uri(storage: str) -> bool:
    return "://" in storage


def resolve_storage(storage: str | None) -> str:
    """An absolute local path, or the URI as given (``file://`` URIs become paths)."""
    storage = storage or DEFAULT_STORAGE
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    if is_uri(storage):
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def write_text(path: str, text: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as out:
        out.write(text.encode())


def read_text(path: str) -> str:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def delete_file(path: str) -> None:
    fs, p = _fs(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def dirs_holding(root: str, filename: str) -> list[tuple[str, float]]:
    """``(name, mtime)`` of each directory right under ``root`` that holds ``filename``, oldest first."""
    fs, p = _fs(root)
    try:
        entries = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    dirs = [e.path for e in entries if e.type == pafs.FileType.Directory]
    found = [
        (d.rsplit("/", 1)[-1], info.mtime.timestamp() if info.mtime else 0.0)
        for d, info in zip(dirs, fs.get_file_info([f"{d}/{filename}" for d in dirs]))
        if info.type == pafs.FileType.File
    ]
    return sorted(found, key=lambda item: item[1])
