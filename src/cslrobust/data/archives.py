"""Checksummed, resumable downloads and tar archives read without trusting their member paths.

A download streams into ``<dest>.part``, resumes it with an HTTP ``Range`` request when the
server honours one, and becomes ``dest`` (by ``os.replace``) only after its checksum matches, so a
partial or corrupted file never passes as complete. Tar members are admitted only if they are
regular files or directories whose paths stay inside the target: absolute paths, ``..``, links and
devices are refused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from tqdm import tqdm

from cslrobust.errors import DataError

ChecksumAlgorithm = Literal["md5", "sha256"]

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0
# Everything tarfile/gzip/bz2/lzma raise on a damaged or truncated archive.
_TAR_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


def file_digest(path: Path, algorithm: ChecksumAlgorithm) -> str:
    """Hex digest of a file's content, read in 1 MiB chunks.

    Args:
        path: The file.
        algorithm: ``"md5"`` or ``"sha256"``.

    Returns:
        The lower-case hex digest.

    Raises:
        ValueError: If ``algorithm`` is not supported (a programming error).
    """
    if algorithm not in ("md5", "sha256"):
        raise ValueError(
            f"unsupported checksum algorithm {algorithm!r}; expected 'md5' or 'sha256'"
        )
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file (streamed)."""
    return file_digest(path, "sha256")


def md5_file(path: Path) -> str:
    """MD5 hex digest of a file (streamed); MD5 only because the CIFAR authors publish it."""
    return file_digest(path, "md5")


def download(
    url: str,
    dest: Path,
    *,
    checksum: str,
    algorithm: ChecksumAlgorithm,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum, resuming an earlier partial download.

    Bytes go to ``dest`` + ``".part"``. If that file exists, the download asks for the remaining
    bytes with a ``Range`` header and appends them when the server answers ``206 Partial Content``;
    any other answer restarts from zero. The checksum is verified before the ``.part`` file is
    atomically renamed to ``dest``. If ``dest`` already exists with the right checksum, nothing is
    downloaded.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: Final path of the file; parent directories are created.
        checksum: Expected hex digest (case-insensitive).
        algorithm: ``"md5"`` or ``"sha256"``.
        progress: Show a tqdm progress bar.

    Returns:
        ``dest``.

    Raises:
        DataError: If the URL is not http(s), the server answers with an error, the transfer is
            interrupted (the ``.part`` file is kept for resuming), or the checksum does not match
            (the ``.part`` file is deleted).
    """
    expected = checksum.strip().lower()
    if not url.startswith(("http://", "https://")):
        raise DataError(f"cannot download {url!r}: expected an http:// or https:// URL")
    if dest.is_file() and file_digest(dest, algorithm) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")

    for attempt in range(2):
        try:
            _fetch_into(url, part, progress=progress, desc=dest.name)
            break
        except _RestartNeeded:
            part.unlink(missing_ok=True)
        except urllib.error.HTTPError as err:
            # 416: the range starts at or past the end, so the .part is complete or longer than the
            # file; keep it if it verifies, otherwise start over once.
            if err.code != 416 or attempt > 0:
                raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
            if file_digest(part, algorithm) == expected:
                break
            part.unlink(missing_ok=True)
        except (OSError, http.client.HTTPException) as err:
            raise DataError(
                f"download of {url} was interrupted ({err}); "
                f"partial data kept in {part} for resuming"
            ) from None

    got = file_digest(part, algorithm) if part.is_file() else "nothing (no data received)"
    if got != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {url}: expected {algorithm} {expected}, got {got}; "
            f"deleted the partial file {part}"
        )
    os.replace(part, dest)
    return dest


class _RestartNeeded(Exception):
    """The server answered a Range request with a different range; the download must restart."""


def _fetch_into(url: str, part: Path, *, progress: bool, desc: str) -> None:
    """Stream ``url`` into ``part``, appending to it when the server honours a Range request."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url)
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        resumed = offset > 0 and response.status == 206
        if resumed and _range_start(response) != offset:
            raise _RestartNeeded
        if response.status == 206 and not resumed:
            raise _RestartNeeded  # a partial answer to a request for the whole file
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        with (
            part.open("ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
        # http.client returns b"" rather than raising when the connection closes early.
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """First byte position of a ``Content-Range: bytes start-end/total`` header, if present."""
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None


def check_tar_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """Refuse tar members that could write outside an extraction target or are not plain data.

    Args:
        member: The member header.
        archive: The archive it came from (named in the error message).

    Returns:
        The member's path, relative and normalised (``./a/b`` becomes ``a/b``; ``.`` is empty).

    Raises:
        DataError: If the member is a link, device or FIFO, or its path is absolute or contains
            ``..``; the message names the member and the archive.
    """
    if not (member.isfile() or member.isdir()):
        kind = "a link" if (member.issym() or member.islnk()) else "a device or special file"
        raise DataError(
            f"refusing tar member {member.name!r} in {archive}: it is {kind}; "
            "expected only regular files and directories"
        )
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    # A leading "/" or a Windows drive ("C:") would make the path absolute on some platform.
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise DataError(
            f"refusing tar member {member.name!r} in {archive}: absolute path; "
            "expected a path relative to the archive root"
        )
    if ".." in path.parts:
        raise DataError(
            f"refusing tar member {member.name!r} in {archive}: '..' escapes the target; "
            "expected a path inside the archive root"
        )
    return path


def open_tar_stream(archive: Path) -> tarfile.TarFile:
    """Open a ``.tar``/``.tar.gz``/``.tar.bz2``/``.tar.xz`` for one sequential pass.

    Raises:
        DataError: If the file is missing or is not a readable tar archive.
    """
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist; expected a tar file")
    try:
        return tarfile.open(archive, mode="r|*")
    except _TAR_READ_ERRORS as err:
        raise DataError(f"cannot read archive {archive}: {err}; expected a tar archive") from None


@dataclass(frozen=True)
class TarEntry:
    """One checked member of a tar archive, read into memory.

    Attributes:
        path: Relative, normalised member path.
        is_dir: Whether the member is a directory (then ``data`` is empty).
        data: The file content.
        where: ``"<archive>:<path>"``, for messages.
    """

    path: PurePosixPath
    is_dir: bool
    data: bytes
    where: str


def read_tar_entries(archive: Path) -> Iterator[TarEntry]:
    """Yield the members of a tar archive in archive order, each checked and read into memory.

    Meant for archives of many small files (image folders); use :func:`safe_extract_tar` for large
    members.

    Raises:
        DataError: If the archive is missing, corrupt or truncated, or a member is refused by
            :func:`check_tar_member`.
    """
    with open_tar_stream(archive) as tar:
        try:
            for member in tar:
                path = check_tar_member(member, archive)
                where = f"{archive}:{path}"
                if member.isdir():
                    yield TarEntry(path=path, is_dir=True, data=b"", where=where)
                    continue
                source = tar.extractfile(member)
                data = source.read() if source is not None else b""
                yield TarEntry(path=path, is_dir=False, data=data, where=where)
        except _TAR_READ_ERRORS as err:
            raise _corrupt_archive(archive, err) from None


def safe_extract_tar(archive: Path, target: Path) -> None:
    """Extract a tar archive into ``target``, refusing members that are not plain data inside it.

    Members are checked one by one as they are read (see :func:`check_tar_member`); in addition
    the resolved destination must lie inside ``target`` (which catches symlinks already present in
    ``target``). Files are written to a temporary ``.part`` file and renamed when complete, so a
    file present under its final name is never truncated. Permissions and owners in the archive
    are ignored: files are created with mode 0o644.

    Args:
        archive: The tar file (any compression ``tarfile`` detects).
        target: The directory to extract into; created if missing.

    Raises:
        DataError: If a member is refused (nothing is written for it or after it) or the archive is
            corrupt or truncated (members extracted before the damage remain).
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    with open_tar_stream(archive) as tar:
        try:
            for member in tar:
                relative = check_tar_member(member, archive)
                dest = (root / relative).resolve()
                if not dest.is_relative_to(root):
                    raise DataError(
                        f"refusing tar member {member.name!r} in {archive}: it resolves to {dest}, "
                        f"outside the target {root}"
                    )
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                source = tar.extractfile(member)
                if source is None:  # unreachable for regular files; keeps the type checker honest
                    raise DataError(f"cannot read tar member {member.name!r} in {archive}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(source, dest)
        except _TAR_READ_ERRORS as err:
            raise _corrupt_archive(archive, err) from None


def _corrupt_archive(archive: Path, err: BaseException) -> DataError:
    return DataError(f"archive {archive} is corrupt or truncated ({err}); expected a complete tar")


def _write_atomically(source: IO[bytes], dest: Path) -> None:
    """Copy a stream to ``dest`` through a uniquely named ``.part`` file and an atomic rename.

    Read errors propagate unchanged (the caller reports a corrupt archive); write errors become a
    DataError naming ``dest``. The unique name keeps concurrent extractions from sharing a file.
    """
    try:
        handle = tempfile.NamedTemporaryFile(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
        )
    except OSError as err:
        raise DataError(f"cannot create a file in {dest.parent}: {err}") from None
    part = Path(handle.name)
    try:
        with handle:
            while chunk := source.read(_CHUNK_BYTES):
                try:
                    handle.write(chunk)
                except OSError as err:
                    raise DataError(f"cannot write {part}: {err}") from None
        try:
            part.chmod(0o644)  # NamedTemporaryFile creates 0o600; extracted data is not secret
            os.replace(part, dest)
        except OSError as err:
            raise DataError(f"cannot create {dest}: {err}; expected a writable file path") from None
    finally:
        part.unlink(missing_ok=True)
