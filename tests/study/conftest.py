"""A tiny synthetic ImageFolder archive and study file for runner tests (no real data needed)."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

STUDY = """
name: synthetic
output_dir: out
seeds: [0]
base:
  data: {{name: image_folder, source: {source}, val_per_class: 4}}
  model: {{width: 8, proj_hidden_dim: 32, proj_dim: 16, channels_last: false}}
  train: {{epochs: {epochs}, batch_size: 32, lr: 0.05, tensorboard: false, log_every: 1}}
  probe: {{epochs: 5, batch_size: 32}}
  attack: {{eps_linf: [0, 2/255], steps: 2, n_images: 40, batch_size: 40}}
methods:
  supervised: {{objective: {{name: supervised}}}}
  simclr: {{objective: {{name: simclr}}}}
  simclr_oracle: {{objective: {{name: simclr_fnr}}}}
"""


def make_archive(
    path: Path, classes: int = 4, train: int = 24, test: int = 10, size: int = 16
) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train), ("test", test)):
            for c in range(classes):
                for i in range(n):
                    base = np.zeros((size, size, 3)) + rng.uniform(0, 255, 3) * 0.3
                    base[..., c % 3] += 120 + 40 * (c // 3)
                    img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(
                        np.uint8
                    )
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/class{c}/{i:03d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.fixture
def synthetic_study(tmp_path: Path):
    def build(epochs: int = 2, size: int = 16) -> Path:
        archive = make_archive(tmp_path / "data.tar.gz", size=size)
        study = tmp_path / "study.yaml"
        study.write_text(STUDY.format(source=archive, epochs=epochs))
        return study

    return build


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> Path:
    """The archive of :func:`make_archive`, written once per session (for module-scoped runs)."""
    return make_archive(tmp_path_factory.mktemp("synthetic") / "data.tar.gz")


# --- results-store backends (SQLite and a real PostgreSQL server) -------------------------------

POSTGRES_ENV = "CSLROBUST_TEST_POSTGRES_URL"


def _postgres_binary(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL URL whose role may create databases.

    ``$CSLROBUST_TEST_POSTGRES_URL`` (CI starts the Debian package's server and sets it); otherwise a
    throwaway server from ``initdb`` + ``pg_ctl`` (run as an unprivileged user when we are root);
    otherwise the PostgreSQL tests skip.
    """
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield url
        return
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} or install initdb/pg_ctl")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cslrobust-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = next((u for u in ("postgres", "pgtest", "nobody") if _user_exists(u)), None)
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            pytest.skip("no PostgreSQL: running as root without an unprivileged user to run it")
        folder.chmod(0o755)
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        prefix = [runuser, "-u", user, "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "cslr", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://cslr@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def postgres_url(postgres_server: str):
    """A fresh, empty database on the test server (dropped afterwards)."""
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(postgres_server)
    name = f"cslrobust_{secrets.token_hex(6)}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """A results store URL of each backend (an absolute SQLite file; a fresh PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'results.db'}"
    return request.getfixturevalue("postgres_url")


# --- a study of cheap stages, for the lease/worker tests ----------------------------------------

TINY_STUDY = """
name: tiny
output_dir: out
seeds: {seeds}
stages: [tiny_a, tiny_b]
methods:
  simclr: {{objective: {{name: simclr}}}}
cluster: {{lease_s: {lease_s}, heartbeat_s: {heartbeat_s}, poll_s: 0.1}}
"""
ROWS_PER_STAGE = 3


def tiny_stage_body(name: str, seconds: float):
    """A stage that appends its pid to ``<output_dir>/attempts/<run id>-<name>`` and returns 3 rows.

    While ``<output_dir>/hold-<name>`` exists the stage waits (a test kills its worker meanwhile).
    """
    import os
    import time

    def run(cfg, progress: bool):
        del progress
        out = Path(cfg.output_dir)
        folder = out / "attempts"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{cfg.run_id()}-{name}", "a") as handle:
            handle.write(f"{os.getpid()}\n")
        while (out / f"hold-{name}").exists():
            time.sleep(0.05)
        time.sleep(seconds)
        return [
            {"metric": f"{name}/value", "value": float(cfg.seed) + i, "epoch": i}
            for i in range(ROWS_PER_STAGE)
        ]

    return run


@pytest.fixture
def tiny_stages(monkeypatch):
    """Register the stages ``tiny_a`` and ``tiny_b`` (needs ``tiny_a``) for one test.

    Returns a function re-registering them with another stage duration (seconds).
    """
    from cslrobust.study.stages import STAGES, Stage

    def register(seconds: float = 0.02) -> None:
        for i, name in enumerate(("tiny_a", "tiny_b")):
            stage = Stage(
                name=name,
                order=900 + i,
                run=tiny_stage_body(name, seconds),
                needs=("tiny_a",) if name == "tiny_b" else (),
            )
            monkeypatch.setitem(STAGES._entries, name, stage)

    register()
    return register


@pytest.fixture
def tiny_study(tmp_path: Path, tiny_stages):
    """Build a study file of ``cells`` cells (seeds) of the tiny stages; returns its path."""

    def build(
        cells: int = 4, lease_s: float = 30.0, heartbeat_s: float = 1.0, seconds: float = 0.02
    ) -> Path:
        tiny_stages(seconds)
        study = tmp_path / "tiny.yaml"
        study.write_text(
            TINY_STUDY.format(seeds=list(range(cells)), lease_s=lease_s, heartbeat_s=heartbeat_s)
        )
        return study

    return build
