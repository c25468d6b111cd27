"""The cache remembers deletions for a while: nothing older than a deletion comes back."""

from __future__ import annotations

from typing import Any

from kubetrain.operator.reconcile.cache import Cache
from tests.clock import Clock

JSON = dict[str, Any]


def obj(name: str, version: int, kind: str = "TrainingJob", **more: Any) -> JSON:
    meta = {"namespace": "ns", "name": name, "resourceVersion": str(version)}
    return {"kind": kind, "metadata": meta, **more}


def test_a_write_back_older_than_the_deletion_does_not_bring_the_job_back() -> None:
    cache = Cache()
    key = cache.put_job(obj("a", 5))
    cache.drop_job(key, 7)  # the watch's DELETED, at the deletion's version
    cache.put_job(obj("a", 6))  # the response of a status write sent before the deletion
    assert cache.job(key) is None and cache.jobs() == []
    cache.put_job(obj("a", 9))  # created again under the same name: newer, taken
    found = cache.job(key)
    assert found is not None and found["metadata"]["resourceVersion"] == "9"


def test_a_deletion_of_a_job_never_seen_refuses_what_is_older_and_keeps_nothing_else() -> None:
    cache = Cache()
    cache.drop_job(("ns", "a"), 7)
    cache.put_job(obj("a", 3))
    assert cache.jobs() == []
    cache.drop_job(("ns", "b"))  # gone with no version known and nothing cached: no record
    assert cache.counts()["tombstones"] == 1


def test_pods_children_and_shared_objects_are_buried_alike() -> None:
    cache, job = Cache(), ("ns", "a")
    cache.put_pod(job, obj("a-worker-0-a1", 10, "Pod"))
    cache.drop_pod(job, "a-worker-0-a1", 12)
    cache.put_pod(job, obj("a-worker-0-a1", 11, "Pod"))  # a lagging event
    assert cache.pods(job) == [] and cache.pod("ns", "a-worker-0-a1") is None

    cache.put_child(job, obj("a-workers", 20, "Service"))
    cache.drop_child(job, "Service", "a-workers", 21)
    cache.put_child(job, obj("a-workers", 20, "Service"))  # an apply's response, late
    assert cache.child(job, "Service", "a-workers") is None

    cache.put_shared(obj("kubetrain-trainer", 30, "Role"))
    cache.drop_shared("ns", "Role", "kubetrain-trainer", 31)
    cache.put_shared(obj("kubetrain-trainer", 30, "Role"))
    assert cache.shared("ns", "Role", "kubetrain-trainer") is None
    counts = cache.counts()
    assert counts["tombstones"] == 3
    assert not any(v for k, v in counts.items() if k != "tombstones")  # no empty per-job maps


def test_a_deletion_without_a_version_is_dated_by_the_last_body_seen() -> None:
    cache = Cache()
    key = cache.put_job(obj("a", 5))
    cache.drop_job(key)  # e.g. a status write answered 404: gone, version unknown
    cache.put_job(obj("a", 5))
    assert cache.job(key) is None


def test_tombstones_are_kept_for_their_lifetime_only() -> None:
    clock = Clock()
    cache = Cache(clock=clock, tombstone_seconds=300.0)
    for i in range(100):
        cache.drop_job(("ns", f"job-{i}"), 1000 + i)
        clock.now += 1.0
    assert cache.counts()["tombstones"] == 100
    clock.now += 249.5  # the first 50 are more than 300 s old
    assert cache.counts()["tombstones"] == 50
    clock.now += 100.0
    assert cache.counts()["tombstones"] == 0
    cache.put_job(obj("job-0", 900))  # older than the deletion, but the record has expired
    assert len(cache.jobs()) == 1


def test_a_worker_pod_keeps_what_dates_its_report_and_drops_the_rest() -> None:
    report_entry = {
        "manager": "trainer",
        "operation": "Update",
        "time": "2026-12-01T10:03:07Z",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:kubetrain.io/progress": {}}}},
    }
    other = {"manager": "kubelet", "time": "2026-12-01T10:00:00Z", "fieldsV1": {"f:status": {}}}
    pod = obj("a-worker-0-a1", 4, "Pod", spec={"nodeName": "n", "containers": [{"env": []}]})
    pod["metadata"]["managedFields"] = [other, report_entry]
    cache = Cache()
    cache.put_pod(("ns", "a"), pod)
    [kept] = cache.pods(("ns", "a"))
    assert kept["spec"] == {"nodeName": "n"}
    assert [e["manager"] for e in kept["metadata"]["managedFields"]] == ["trainer"]
    assert pod["metadata"]["managedFields"] == [other, report_entry]  # the event's body intact
