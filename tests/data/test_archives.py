from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cslrobust.data.archives import (
    check_tar_member,
    download,
    md5_file,
    read_tar_entries,
    safe_extract_tar,
    sha256_file,
)
from cslrobust.errors import DataError

PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes, several download chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@dataclass
class FileServer:
    """A local HTTP server; its behaviour is switched by the test while it runs."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    truncate_at: int | None = None  # send only this many body bytes, then close
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            start = 0
            if range_header and state.honour_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_at is not None:
                body = body[: state.truncate_at]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(files={"payload.bin": PAYLOAD})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_file_digests_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path) == PAYLOAD_SHA256
    assert md5_file(path) == PAYLOAD_MD5


@pytest.mark.parametrize(
    ("algorithm", "checksum"), [("sha256", PAYLOAD_SHA256), ("md5", PAYLOAD_MD5)]
)
def test_download_with_good_checksum(
    server: FileServer, tmp_path: Path, algorithm: str, checksum: str
) -> None:
    dest = tmp_path / "sub" / "payload.bin"
    got = download(
        server.url("payload.bin"),
        dest,
        checksum=checksum.upper(),
        algorithm=algorithm,  # type: ignore[arg-type]
        progress=False,
    )
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()


def test_download_with_bad_checksum_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"expected sha256 {wrong}, got {PAYLOAD_SHA256}"):
        download(
            server.url("payload.bin"), dest, checksum=wrong, algorithm="sha256", progress=False
        )
    assert not dest.exists()
    assert not _part(dest).exists()


def test_download_resumes_partial_file(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    _part(dest).write_bytes(PAYLOAD[:1000])
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/payload.bin", "bytes=1000-")]
    assert not _part(dest).exists()


def test_download_restarts_when_range_is_ignored(server: FileServer, tmp_path: Path) -> None:
    server.honour_range = False
    dest = tmp_path / "payload.bin"
    _part(dest).write_bytes(b"stale bytes from another file")
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD


def test_download_of_complete_part_file_after_416(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    _part(dest).write_bytes(PAYLOAD)  # a crash between the last byte and the rename
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD


def test_resumed_download_with_corrupt_prefix_never_passes(
    server: FileServer, tmp_path: Path
) -> None:
    dest = tmp_path / "payload.bin"
    _part(dest).write_bytes(b"\xff" * 1000)  # right length, wrong bytes
    with pytest.raises(DataError, match="checksum mismatch"):
        download(
            server.url("payload.bin"),
            dest,
            checksum=PAYLOAD_SHA256,
            algorithm="sha256",
            progress=False,
        )
    assert not dest.exists() and not _part(dest).exists()
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_and_resumes(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    server.truncate_at = 100_000
    with pytest.raises(DataError, match="interrupted"):
        download(
            server.url("payload.bin"),
            dest,
            checksum=PAYLOAD_SHA256,
            algorithm="sha256",
            progress=False,
        )
    assert not dest.exists()
    assert _part(dest).read_bytes() == PAYLOAD[:100_000]
    server.truncate_at = None
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/payload.bin", "bytes=100000-")


def test_existing_verified_file_is_not_downloaded(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    dest.write_bytes(PAYLOAD)
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert server.requests == []


def test_existing_wrong_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"old")
    download(
        server.url("payload.bin"), dest, checksum=PAYLOAD_SHA256, algorithm="sha256", progress=False
    )
    assert dest.read_bytes() == PAYLOAD


def test_download_http_error_names_url(server: FileServer, tmp_path: Path) -> None:
    url = server.url("missing.bin")
    with pytest.raises(DataError, match=f"{url} failed: HTTP 404"):
        download(url, tmp_path / "x", checksum="0" * 64, algorithm="sha256", progress=False)


def test_download_refuses_non_http_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file:///etc/passwd"):
        download("file:///etc/passwd", tmp_path / "x", checksum="0", algorithm="md5")


# --- tar archives -------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, data: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def test_safe_extract_tar_extracts_files(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "a.tar.gz",
        [_special("./top", tarfile.DIRTYPE), _file("./top/a.txt", b"A"), _file("top/b/c.txt")],
    )
    target = tmp_path / "out"
    safe_extract_tar(archive, target)
    assert (target / "top" / "a.txt").read_bytes() == b"A"
    assert (target / "top" / "b" / "c.txt").read_bytes() == b"data"
    assert not list(target.rglob("*.part"))


def _refused_members(outside: Path) -> list[tuple[str, tuple[tarfile.TarInfo, bytes]]]:
    return [
        ("../evil.txt", _file("../evil.txt")),
        ("inner/../../evil.txt", _file("inner/../../evil.txt")),
        (str(outside / "abs.txt"), _file(str(outside / "abs.txt"))),
        ("link", _special("link", tarfile.SYMTYPE, str(outside / "evil.txt"))),
        ("hard", _special("hard", tarfile.LNKTYPE, "ok.txt")),
        ("null", _special("null", tarfile.CHRTYPE)),
        ("fifo", _special("fifo", tarfile.FIFOTYPE)),
    ]


@pytest.mark.parametrize("index", range(7))
def test_safe_extract_tar_refuses_unsafe_members(tmp_path: Path, index: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name, member = _refused_members(outside)[index]
    archive = _tar(tmp_path / "evil.tar", [_file("ok.txt"), member], mode="w")
    target = tmp_path / "target" / "inner"
    with pytest.raises(DataError, match="refusing tar member") as err:
        safe_extract_tar(archive, target)
    assert repr(name) in str(err.value) and str(archive) in str(err.value)
    assert "\n" not in str(err.value)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target" / "evil.txt").exists()
    assert {p.name for p in target.iterdir()} == {"ok.txt"}  # nothing for the refused member


def test_safe_extract_tar_refuses_escape_through_existing_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sneaky").symlink_to(outside, target_is_directory=True)
    archive = _tar(tmp_path / "a.tar", [_file("sneaky/evil.txt")], mode="w")
    with pytest.raises(DataError, match="outside the target"):
        safe_extract_tar(archive, target)
    assert list(outside.iterdir()) == []


def test_safe_extract_tar_corrupt_archive_names_it(tmp_path: Path) -> None:
    archive = tmp_path / "random.tar.gz"
    archive.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match=str(archive)):
        safe_extract_tar(archive, tmp_path / "out")


def test_safe_extract_tar_truncated_archive(tmp_path: Path) -> None:
    good = _tar(
        tmp_path / "good.tar.gz", [_file(f"f{i}.bin", bytes(range(256)) * 400) for i in range(4)]
    )
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    target = tmp_path / "out"
    with pytest.raises(DataError, match=f"{truncated} is corrupt or truncated"):
        safe_extract_tar(truncated, target)
    # Whatever was extracted is complete; no file exists under its final name half-written.
    for path in target.rglob("*"):
        assert path.read_bytes() == bytes(range(256)) * 400


def test_safe_extract_tar_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        safe_extract_tar(tmp_path / "nope.tar", tmp_path / "out")


def test_check_tar_member_normalises_dot_prefix(tmp_path: Path) -> None:
    info = tarfile.TarInfo("./a/b.txt")
    assert check_tar_member(info, tmp_path / "x.tar").as_posix() == "a/b.txt"


def test_read_tar_entries_yields_checked_members(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", [_special("d", tarfile.DIRTYPE), _file("d/x", b"X")])
    entries = list(read_tar_entries(archive))
    assert [(e.path.as_posix(), e.is_dir, e.data) for e in entries] == [
        ("d", True, b""),
        ("d/x", False, b"X"),
    ]
    assert entries[1].where == f"{archive}:d/x"
