"""Fetching a dataset's official archive: streamed with a progress bar, hash-checked, extracted safely.

Nothing half-written is left behind: the archive is fetched into a ``.part`` file, checked, and
extracted member by member inside the target folder only (no absolute paths, no ``..``).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from sslbench.contract.errors import ConfigError, DataError

console, err_console = Console(), Console(stderr=True)


@dataclass(frozen=True)
class Download:
    """An official archive and, when known, its SHA-256."""

    url: str
    sha256: str | None
    note: str


#: default archives; hashes only where a published record exists
DOWNLOADS: dict[str, Download] = {
    "lsp": Download(
        "http://sam.johnson.io/research/lsp_dataset.zip",
        # 35,416,832 bytes; as recorded by TensorFlow Datasets (url_checksums/leeds_sports_pose.txt)
        "07cba8044f153e48aec3d02cf2ab4c2c86dbf15edae5699e77b684562851676e",
        "Leeds Sports Pose, 2000 images (about 35 MB)",
    ),
    "lspet": Download(
        "http://sam.johnson.io/research/lspet_dataset.zip",
        None,  # no published hash found: the computed one is printed for the record
        "LSP-extended, 10,000 images",
    ),
}


def _fetch(url: str, part: Path) -> str:
    """Stream *url* into *part* with a progress bar; returns the SHA-256 hex digest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as sink:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task(f"downloading {PurePosixPath(url).name}", total=total)
                while chunk := response.read(1 << 20):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            if total is not None and sink.tell() != total:
                raise DataError(f"{url}: download incomplete: got {sink.tell()} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"{url}: download failed: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: download failed: {type(exc).__name__}: {exc}") from None
    return digest.hexdigest()


def _safe_target(root: Path, name: str, archive: str) -> Path | None:
    """Where member *name* goes under *root* (None for the archive's top folder itself)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise DataError(f"{archive}: unsafe member {name!r} would be written outside {root}")
    if not pure.parts or pure.parts == (".",):
        return None
    target = (root / Path(*pure.parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{archive}: unsafe member {name!r} would be written outside {root}")
    return target


def _strip_prefix(names: list[str]) -> str:
    """``"x/"`` when every member lies in one top folder x that is not ``images`` itself (a wrapped archive)."""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1:
        top = next(iter(tops))
        if top != "images" and all(PurePosixPath(n).parts[0] == top for n in names):
            if any(len(PurePosixPath(n).parts) > 1 for n in names):
                return top + "/"
    return ""


def _members(archive: Path, label: str | None = None) -> tuple[list[tuple[str, bool, Any]], Any]:
    """(name, is_dir, handle) of every member, and the open archive; links and devices are refused.

    Errors name *label* (the URL of a download, whose temporary file is removed), else the file.
    """
    label = label or archive.name
    try:
        return _open_members(archive, label)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"{label}: not a readable zip or tar archive (truncated download?): {type(exc).__name__}: {exc}"
        ) from None


def _open_members(archive: Path, label: str) -> tuple[list[tuple[str, bool, Any]], Any]:
    if zipfile.is_zipfile(archive):
        opened: Any = zipfile.ZipFile(archive)
        members = []
        for info in opened.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                opened.close()
                raise DataError(f"{label}: member {info.filename!r} is a symbolic link; refusing to extract")
            members.append((info.filename, info.is_dir(), info))
        return members, opened
    if tarfile.is_tarfile(archive):
        opened = tarfile.open(archive)
        members = []
        for info in opened.getmembers():
            if not (info.isfile() or info.isdir()):
                opened.close()
                raise DataError(f"{label}: member {info.name!r} is a link or device; refusing to extract")
            members.append((info.name, info.isdir(), info))
        return members, opened
    raise DataError(f"{label}: not a zip or tar archive (an HTML page or a truncated download?)")


def _open_member(opened: Any, handle: Any) -> IO[bytes]:
    if isinstance(opened, zipfile.ZipFile):
        return opened.open(handle)
    stream = opened.extractfile(handle)
    assert stream is not None  # regular files always have a stream
    return stream


def extract_archive(archive: Path, root: Path, label: str | None = None) -> int:
    """Extract a zip or tar archive into *root*; every member is checked before anything is written.

    Members escaping *root* (absolute paths, ``..``), links and devices are refused; an
    archive wrapped in one top folder is unwrapped so ``root/images`` is the image folder.
    Returns the number of files written.
    """
    label = label or archive.name
    members, opened = _members(archive, label)
    try:
        prefix = _strip_prefix([name for name, _, _ in members])
        planned: list[tuple[Path, bool, Any]] = []
        for name, is_dir, handle in members:
            inner = name[len(prefix) :] if prefix and name.startswith(prefix) else name
            target = _safe_target(root, inner, label)
            if target is not None:
                planned.append((target, is_dir, handle))
        written = 0
        for target, is_dir, handle in planned:
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with _open_member(opened, handle) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            written += 1
        return written
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract: {type(exc).__name__}: {exc}") from None
    finally:
        opened.close()


def _check_sha256(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"--sha256 must be 64 hexadecimal digits, got {text!r}")
    return text


def download_dataset(name: str, root: Path, url: str | None = None, sha256: str | None = None) -> int:
    """Fetch, check and extract dataset *name* into *root*; returns the number of files written.

    The archive is streamed to a temporary file inside *root* and removed afterwards,
    whatever happens; on a failed download or hash mismatch nothing else is left
    behind (an empty *root* this call created is removed too).
    """
    known = DOWNLOADS[name]
    expected = _check_sha256(sha256)
    source = url or known.url
    if expected is None and url is None:
        expected = known.sha256
    images = root / "images"
    if images.exists():
        raise DataError(f"{images}: already exists; remove it or choose another --root (or run sslbench data verify)")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{root}: cannot create the folder: {exc}") from None
    handle, part_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=root)
    part = Path(part_name)
    try:
        with open(handle, "wb"):
            pass
        digest = _fetch(source, part)
        if expected is not None and digest != expected:
            raise DataError(f"{source}: SHA-256 mismatch: got {digest}, expected {expected}; the download was removed")
        if expected is None:
            console.print(
                f"SHA-256 {digest} (not checked: no known hash for this archive; pass --sha256 to check it)",
                soft_wrap=True,
                highlight=False,
            )
        else:
            console.print(f"SHA-256 {digest} checked", highlight=False)
        return extract_archive(part, root, source)
    except BaseException:
        part.unlink(missing_ok=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise
    finally:
        part.unlink(missing_ok=True)
