"""The results store on SQLAlchemy Core: one schema on SQLite and PostgreSQL, migration, URL errors."""

import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import one_line_error

from cslrobust.errors import ConfigError
from cslrobust.study.store import SCHEMA_VERSION, ResultsStore, storage_url


def _tables(store: ResultsStore) -> dict[str, list[str]]:
    with store.transaction() as conn:
        inspector = sa.inspect(conn)
        return {
            name: sorted(c["name"] for c in inspector.get_columns(name))
            for name in sorted(inspector.get_table_names())
        }


def test_same_schema_on_both_backends(store_url: str, tmp_path: Path):
    with ResultsStore(store_url) as store, ResultsStore(tmp_path / "ref.db") as reference:
        assert store.schema_version() == SCHEMA_VERSION == 2
        assert _tables(store) == _tables(reference)
        assert set(_tables(store)) == {
            "cells",
            "leases",
            "results",
            "schema_version",
            "stages",
        }


def test_rows_marker_and_replace_on_both_backends(store_url: str):
    with ResultsStore(store_url) as store:
        store.register_cell("c", "s", "simclr", 0, {"a": 1})
        store.register_cell("c", "s", "simclr", 0, {"a": 1})  # idempotent
        rows = [
            {"metric": "robust_accuracy", "value": 0.25, "eps": 2 / 255, "attack": "pgd", "n": 4},
            {"metric": "clean_accuracy", "value": 0.5},
        ]
        store.commit_stage("c", "attack:1", rows, "sha", seconds=1.5)
        store.commit_stage("c", "attack:1", rows, "sha", seconds=2.5)  # replaces, no duplicates
        found = store.rows()
        assert [r["metric"] for r in found] == ["robust_accuracy", "clean_accuracy"]
        assert found[0]["eps"] == 2 / 255 and found[0]["n"] == 4 and found[0]["method"] == "simclr"
        assert found[1]["eps"] == -1.0 and found[1]["attack"] == ""
        assert store.completed_stages("c") == {"attack:1"}
        assert store.stage_seconds({"c": ["attack:1", "probe:1"]}) == (2.5, 0)
        assert store.count_rows() == 2


def test_a_failed_commit_writes_nothing(store_url: str):
    with ResultsStore(store_url) as store:
        store.register_cell("c", "s", "m", 0, {})
        bad = [{"metric": "a", "value": 1.0}, {"metric": "a", "value": 2.0}]  # same UNIQUE key
        with pytest.raises(sa.exc.IntegrityError):
            store.commit_stage("c", "probe:1", bad, "sha")
        assert store.count_rows() == 0 and store.completed_stages("c") == set()


def test_a_version_1_sqlite_database_is_upgraded_in_place(tmp_path: Path):
    """A database written by the old sqlite3 schema (no schema_version, leases, stages.seconds)."""
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE cells (cell_id TEXT PRIMARY KEY, study TEXT NOT NULL, method TEXT NOT NULL,
                seed INTEGER NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
                stage TEXT, pid INTEGER, host TEXT, error TEXT, updated_at TEXT NOT NULL);
            CREATE TABLE stages (cell_id TEXT NOT NULL, stage TEXT NOT NULL,
                completed_at TEXT NOT NULL, PRIMARY KEY (cell_id, stage));
            CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, cell_id TEXT NOT NULL,
                stage TEXT NOT NULL, metric TEXT NOT NULL, attack TEXT NOT NULL DEFAULT '',
                norm TEXT NOT NULL DEFAULT '', eps REAL NOT NULL DEFAULT -1,
                corruption TEXT NOT NULL DEFAULT '', severity INTEGER NOT NULL DEFAULT 0,
                epoch INTEGER NOT NULL DEFAULT -1, value REAL, extra TEXT, git_sha TEXT,
                created_at TEXT NOT NULL, UNIQUE (cell_id, stage, metric, attack, norm, eps,
                corruption, severity, epoch));
            CREATE INDEX results_cell ON results (cell_id, stage);
            INSERT INTO cells (cell_id, study, method, seed, config, updated_at)
                VALUES ('c', 's', 'simclr', 0, '{}', '2026-01-01');
            INSERT INTO stages VALUES ('c', 'train:1', '2026-01-01T00:00:00+00:00');
            INSERT INTO results (cell_id, stage, metric, value, created_at)
                VALUES ('c', 'train:1', 'train/loss', 1.25, '2026-01-01');
            """
        )
    conn.close()
    with ResultsStore(db) as store:
        assert store.schema_version() == 2
        assert store.completed_stages("c") == {"train:1"}
        assert store.stage_seconds({"c": ["train:1"]}) == (0.0, 1)
        assert [(r["metric"], r["value"]) for r in store.rows()] == [("train/loss", 1.25)]
        claim = store.claim("c", "probe:1", "w", 30)
        assert claim is not None
        store.commit_stage("c", "probe:1", [{"metric": "m", "value": 1.0}], "sha", 4.5, claim)
        assert store.stage_seconds({"c": ["train:1", "probe:1"]}) == (4.5, 1)
    with ResultsStore(db) as store:  # opening again changes nothing
        assert store.schema_version() == 2 and store.count_rows() == 2


def test_a_newer_schema_is_refused(tmp_path: Path):
    db = tmp_path / "results.db"
    ResultsStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than"):
        ResultsStore(db)


def test_postgres_urls_are_normalised_to_psycopg_and_passwords_masked(tmp_path: Path):
    assert storage_url("postgresql://u:pw@h:5/db", tmp_path) == "postgresql+psycopg://u:pw@h:5/db"
    assert storage_url("postgresql+psycopg://u@h/db", tmp_path) == "postgresql+psycopg://u@h/db"
    assert storage_url("sqlite:///r.db", tmp_path) == f"sqlite:///{tmp_path / 'r.db'}"
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path / 'results.db'}"
    for bad, fragment in [
        ("mysql://u:secret@h/db", "storage URL 'mysql://u:***@h/db' is not supported"),
        (
            "postgresql://u:secret@h:port/db",
            "storage URL 'postgresql://u:***@h:port/db' is malformed",
        ),
        ("postgresql://u:secret@h", "names no host or database"),
    ]:
        with pytest.raises(ConfigError) as err:
            storage_url(bad, tmp_path)
        assert fragment in str(err.value) and "secret" not in str(err.value)


def test_an_unreachable_server_is_one_line_with_the_password_masked():
    tic = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        ResultsStore("postgresql://cslr:secret@127.0.0.1:1/x")
    assert str(err.value) == (
        "results store postgresql+psycopg://cslr:***@127.0.0.1:1/x unreachable: connection refused"
    )
    assert time.perf_counter() - tic < 15


def test_a_missing_database_is_one_line(postgres_server: str):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server).set(database="no_such_db").render_as_string(False)
    with pytest.raises(ConfigError) as err:
        ResultsStore(url)
    assert 'cannot be used: database "no_such_db" does not exist' in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_unreachable_store_exits_2_with_one_line(synthetic_study, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    study = synthetic_study(epochs=1)
    for command in ("run", "status", "report", "work"):
        line = one_line_error(
            ["study", command, str(study), "--storage", "postgresql://u:pw@127.0.0.1:1/db"]
        )
        assert line == (
            "error: results store postgresql+psycopg://u:***@127.0.0.1:1/db unreachable: "
            "connection refused"
        )
    line = one_line_error(["study", "run", str(study), "--set", "storage=postgres://h/db"])
    assert "storage URL 'postgres://h/db' is not supported" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
