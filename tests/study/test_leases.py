"""Stage leases in the results store: exclusive claims, expiry, take-over, fencing (both backends)."""

import multiprocessing
import threading
import time

import pytest

from cslrobust.study import store as store_module
from cslrobust.study.store import LeaseLost, ResultsStore

ROWS = [{"metric": "m", "value": 1.0}]


def test_a_claim_is_exclusive_and_recorded(store_url: str):
    with ResultsStore(store_url) as store:
        claim = store.claim("c", "train:1", "w1", 30)
        assert claim is not None and claim.took_over is None
        assert store.claim("c", "train:1", "w2", 30) is None
        assert store.claim("c", "probe:1", "w2", 30) is not None  # another stage is free
        (lease, _) = store.leases()
        assert (lease.cell_id, lease.stage_key, lease.worker, lease.stage) == (
            "c",
            "train:1",
            "w1",
            "train",
        )
        assert lease.expires_at - lease.acquired_at == pytest.approx(30, abs=0.01)
        assert 0 <= lease.now - lease.heartbeat_at < 5 and not lease.expired


def test_concurrent_claims_of_one_stage_have_one_winner(store_url: str):
    winners = []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        with ResultsStore(store_url) as store:
            barrier.wait()
            if store.claim("c", "train:1", f"w{i}", 30) is not None:
                winners.append(i)

    ResultsStore(store_url).close()  # the schema exists before the race
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_an_expired_lease_is_taken_over_and_the_stale_commit_refused(store_url: str):
    with ResultsStore(store_url) as store:
        store.register_cell("c", "s", "m", 0, {})
        stale = store.claim("c", "train:1", "slow", 0.5)
        assert stale is not None
        assert store.heartbeat(stale, 0.5)
        assert store.claim("c", "train:1", "fresh", 30) is None  # still live
        time.sleep(0.8)
        (lease,) = store.leases()
        assert lease.expired
        fresh = store.claim("c", "train:1", "fresh", 30)
        assert fresh is not None and fresh.took_over is not None
        assert fresh.took_over.startswith("slow on ")
        assert not store.heartbeat(stale, 30)  # the stalled worker learns it lost the lease
        with pytest.raises(LeaseLost, match="taken by another worker"):
            store.commit_stage("c", "train:1", ROWS, "sha", 1.0, stale)
        assert store.count_rows() == 0 and store.completed_stages("c") == set()
        store.commit_stage("c", "train:1", ROWS, "sha", 1.0, fresh)
        assert store.count_rows() == 1 and store.leases() == []  # released with the commit
        # The stalled worker wakes up after the commit: still refused, nothing written twice.
        with pytest.raises(LeaseLost):
            store.commit_stage("c", "train:1", ROWS, "sha", 1.0, stale)
        assert store.count_rows() == 1


def test_a_committed_stage_cannot_be_claimed(store_url: str):
    with ResultsStore(store_url) as store:
        store.register_cell("c", "s", "m", 0, {})
        claim = store.claim("c", "train:1", "w1", 30)
        store.commit_stage("c", "train:1", ROWS, "sha", 1.0, claim)
        assert store.claim("c", "train:1", "w2", 30) is None
        assert store.leases() == []


def _claim_and_exit(url: str) -> None:
    with ResultsStore(url) as store:
        assert store.claim("c", "train:1", "doomed", 600) is not None


def test_a_dead_process_on_this_machine_loses_its_lease_at_once(store_url: str):
    ResultsStore(store_url).close()
    child = multiprocessing.get_context("fork").Process(target=_claim_and_exit, args=(store_url,))
    child.start()
    child.join()
    assert child.exitcode == 0
    with ResultsStore(store_url) as store:
        (lease,) = store.leases()
        assert lease.pid == child.pid and not lease.expired
        claim = store.claim("c", "train:1", "heir", 30)
        assert claim is not None and claim.took_over is not None


def test_a_live_lease_of_another_machine_waits_for_its_expiry(store_url: str, monkeypatch):
    with ResultsStore(store_url) as store:
        monkeypatch.setattr(store_module, "_machine", lambda: "elsewhere/1")
        assert store.claim("c", "train:1", "remote", 0.6) is not None
        monkeypatch.undo()
        assert store.claim("c", "train:1", "local", 30) is None  # pid means nothing here
        time.sleep(0.9)
        assert store.claim("c", "train:1", "local", 30) is not None


def test_release_deletes_expired_leases_unless_forced(store_url: str):
    with ResultsStore(store_url) as store:
        store.claim("c", "train:1", "w1", 0.3)
        live = store.claim("d", "train:1", "w2", 30)
        time.sleep(0.5)
        assert [lease.cell_id for lease in store.release_leases()] == ["c"]
        assert store.release_leases("d", "train") == []
        assert [lease.cell_id for lease in store.release_leases("d", "train", force=True)] == ["d"]
        assert live is not None and not store.heartbeat(live, 30)
        assert store.leases() == []
