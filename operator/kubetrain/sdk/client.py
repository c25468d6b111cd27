"""``kubetrain.Client``: TrainingJobs with the calls of a managed training API.

Everything goes through the Kubernetes API with the caller's own credentials (RBAC
applies), and every change is a change of the TrainingJob's spec that the operator acts
on: stop and resume toggle ``spec.suspend``, cancel deletes the job.
"""

from __future__ import annotations

import builtins
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from kubetrain.api import (
    GROUP,
    PLURAL,
    VERSION,
    Checkpoint,
    DatasetSource,
    EnvVar,
    ModelType,
    Phase,
    Priority,
    TrainingJob,
)
from kubetrain.api.catalogue import Catalogue
from kubetrain.api.status import SPEC_ERRORS
from kubetrain.sdk import build, children, cost, download, migrate, query
from kubetrain.sdk.connection import connect
from kubetrain.sdk.errors import (
    ConflictError,
    KubetrainError,
    NotFoundError,
    PollTimeoutError,
    api_errors,
)
from kubetrain.sdk.query import JobPage, Order, PhaseFilter
from kubetrain.sdk.results import Cancelled, JobEvent
from kubetrain.sdk.watching import JobWatch, Snapshot

STOP_REASON_ANNOTATION = "kubetrain.io/stop-reason"
"""Where ``stop(reason=...)`` records why a job was stopped (removed again on resume)."""

DEFAULT_RESYNC_SECONDS = 60.0

Checkpoints = list[Checkpoint]
Events = list[JobEvent]
Section = build.Section


def _finished(job: TrainingJob) -> bool:
    return job.status.phase is not None and job.status.phase.finished


def _stopped(job: TrainingJob) -> bool:
    return job.status.phase is Phase.STOPPED or _finished(job)


class Client:
    """Create, list, watch, stop, resume and cancel TrainingJobs; estimate their cost.

    Connects like kubectl: ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``,
    else the Pod's ServiceAccount) and ``context``; ``namespace`` defaults to the context's.
    ``config_namespace``/``config_map`` locate the operator's configuration, for ``estimate``.
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        namespace: str | None = None,
        *,
        api_client: client.ApiClient | None = None,
        config_namespace: str = cost.CONFIG_NAMESPACE,
        config_map: str = cost.CONFIG_MAP,
    ) -> None:
        if api_client is None:
            connection = connect(kubeconfig, context, namespace)
            api_client, namespace = connection.api_client, connection.namespace
        self.api_client = api_client
        self.namespace = namespace or "default"
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.config_namespace, self.config_map = config_namespace, config_map

    def close(self) -> None:
        """Release the connection pool."""
        cast(Any, self.api_client).close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    # -- create ------------------------------------------------------------------------------

    def create(
        self,
        name: str | None = None,
        *,
        model_type: ModelType | str,
        dataset: DatasetSource | Mapping[str, Any] | str,
        llm: Section | None = None,
        vision: Section | None = None,
        training: Section | None = None,
        optimization: Section | None = None,
        resources: Section | None = None,
        gpu_type: str | None = None,
        workers: int | None = None,
        gpus_per_worker: int | None = None,
        priority: Priority | str | None = None,
        checkpoint: Section | None = None,
        run_policy: Section | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        image: str | None = None,
        command: Sequence[str] | None = None,
        args: Sequence[str] | None = None,
        env: Sequence[EnvVar | Mapping[str, Any]] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        namespace: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> TrainingJob:
        """Create a TrainingJob; without ``name`` the API server generates one (``tj-xxxxx``).

        Sections (``llm``, ``training``...) are the API's models or plain mappings. The job
        is validated locally first (``ValidationError`` names the field). With ``wait``,
        returns once it Completed or Failed (see ``wait_for_completion``).
        """
        manifest = build.job_manifest(
            name=name,
            namespace=self._ns(namespace),
            model_type=model_type,
            dataset=dataset,
            sections={
                "llm": llm,
                "vision": vision,
                "training": training,
                "optimization": optimization,
                "checkpoint": checkpoint,
                "runPolicy": run_policy,
            },
            resources=build.merged_resources(resources, gpu_type, workers, gpus_per_worker),
            priority=priority,
            labels=labels,
            annotations=annotations,
            extra={
                "description": description,
                "tags": build.tags(tags),
                "image": image,
                "command": None if command is None else list(command),
                "args": None if args is None else list(args),
                "env": None if env is None else [build.section(e) for e in env],
            },
        )
        return self.submit(manifest, wait=wait, timeout=timeout, poll_interval=poll_interval)

    def create_from_request(
        self,
        request: Mapping[str, Any] | None = None,
        /,
        *,
        namespace: str | None = None,
        **fields: Any,
    ) -> TrainingJob:
        """Create a TrainingJob from a request written for a managed-training API.

        Takes the old call's keywords (``dataset_name=``, ``pipeline_type=``, ``config=``,
        ``gpu_type=``, ``wait=``...) or its JSON body (``modelType``, ``datasetId``,
        ``config``, ``gpuType``, ``maxWorkers``...); see ``migrate.convert_request``.
        Substitutions (an architecture kubetrain lacks) come as ``ConversionWarning``.
        """
        converted = migrate.convert_request(request, **fields)
        for note in converted.notes:
            warnings.warn(note, migrate.ConversionWarning, stacklevel=2)
        return self.submit(
            converted.manifest,
            namespace=namespace,
            wait=bool(converted.wait),
            timeout=converted.timeout,
            poll_interval=converted.poll_interval,
        )

    def submit(
        self,
        job: TrainingJob | Mapping[str, Any],
        *,
        namespace: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> TrainingJob:
        """Create a TrainingJob from a whole object or manifest (e.g. loaded from YAML)."""
        manifest = job.to_manifest() if isinstance(job, TrainingJob) else dict(job)
        metadata = dict(manifest.get("metadata") or {})
        metadata["namespace"] = self._ns(namespace or metadata.get("namespace"))
        if not metadata.get("name") and not metadata.get("generateName"):
            metadata["generateName"] = build.GENERATE_NAME
        body = build.wire(build.validated({**manifest, "metadata": metadata}))
        with api_errors():
            created = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, metadata["namespace"], PLURAL, body
            )
        result = build.parse(created)
        if wait:
            assert result.metadata.name is not None
            return self.wait_for_completion(
                result.metadata.name,
                timeout=timeout,
                namespace=result.metadata.namespace,
                poll_interval=poll_interval,
            )
        return result

    # -- read --------------------------------------------------------------------------------

    def get(self, name: str, *, namespace: str | None = None) -> TrainingJob:
        """The TrainingJob ``name``; ``NotFoundError`` when there is none."""
        with api_errors():
            raw = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self._ns(namespace), PLURAL, name
            )
        return build.parse(raw)

    def _page(
        self,
        *,
        namespace: str | None,
        all_namespaces: bool,
        field_selector: str | None,
        label_selector: str | None,
        limit: int | None,
        continue_token: str | None,
    ) -> JobPage:
        kwargs: dict[str, Any] = {}
        for arg, value in (
            ("field_selector", field_selector),
            ("label_selector", label_selector),
            ("limit", limit),
            ("_continue", continue_token),
        ):
            if value is not None:
                kwargs[arg] = value
        with api_errors():
            if all_namespaces:
                raw = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
            else:
                raw = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self._ns(namespace), PLURAL, **kwargs
                )
        listing = cast(dict[str, Any], raw)
        meta = listing.get("metadata") or {}
        return JobPage(
            items=[build.parse(item) for item in listing.get("items") or []],
            continue_token=meta.get("continue") or None,
            remaining=meta.get("remainingItemCount"),
        )

    def list(
        self,
        status: PhaseFilter | None = None,
        model_type: ModelType | str | None = None,
        *,
        priority: Priority | str | None = None,
        labels: Mapping[str, str] | str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        sort: str | None = None,
        order: Order = "asc",
        namespace: str | None = None,
        all_namespaces: bool = False,
    ) -> JobPage:
        """One page of jobs matching the filters, filtered and paged by the API server.

        ``status`` is a phase or a collection of phases (``"running"``, ``Phase.QUEUED``...).
        Without ``sort`` jobs come in the server's order (namespace, name) and ``limit`` /
        ``continue_token`` page through them. A ``sort`` (one of ``query.SORT_KEYS``) needs
        every match: all pages are read, sorted, then cut to ``limit``, with no token.
        """
        fields = query.field_selector(status, model_type, priority)
        selector = query.label_selector(labels)
        if sort is None:
            return self._page(
                namespace=namespace,
                all_namespaces=all_namespaces,
                field_selector=fields,
                label_selector=selector,
                limit=limit,
                continue_token=continue_token,
            )
        if continue_token is not None:
            raise ValueError("sort= reads every matching job; it cannot continue a paged listing")
        everything = self.iter(
            status,
            model_type,
            priority=priority,
            labels=labels,
            namespace=namespace,
            all_namespaces=all_namespaces,
        )
        ordered = query.sort_jobs(everything, sort, order)
        return JobPage(items=ordered[:limit] if limit else ordered)

    def iter(
        self,
        status: PhaseFilter | None = None,
        model_type: ModelType | str | None = None,
        *,
        page_size: int = 100,
        priority: Priority | str | None = None,
        labels: Mapping[str, str] | str | None = None,
        namespace: str | None = None,
        all_namespaces: bool = False,
    ) -> Iterator[TrainingJob]:
        """Every matching job, fetched ``page_size`` at a time as the caller iterates."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        token: str | None = None
        while True:
            page = self._page(
                namespace=namespace,
                all_namespaces=all_namespaces,
                field_selector=query.field_selector(status, model_type, priority),
                label_selector=query.label_selector(labels),
                limit=page_size,
                continue_token=token,
            )
            yield from page.items
            token = page.continue_token
            if not token:
                return

    def checkpoints(self, name: str, *, namespace: str | None = None) -> Checkpoints:
        """The job's checkpoints, oldest first (ids are what ``resume`` accepts)."""
        return list(self.get(name, namespace=namespace).status.checkpoints)

    def events(self, name: str, *, namespace: str | None = None) -> Events:
        """Events about the job (its current incarnation), oldest first."""
        job = self.get(name, namespace=namespace)
        selector = f"involvedObject.kind=TrainingJob,involvedObject.name={name}"
        if job.metadata.uid:
            selector += f",involvedObject.uid={job.metadata.uid}"
        with api_errors():
            found = self.core.list_namespaced_event(self._ns(namespace), field_selector=selector)
        events = [JobEvent.from_api(e) for e in found.items]
        return sorted(events, key=lambda e: e.last_seen.timestamp() if e.last_seen else 0.0)

    # -- change ------------------------------------------------------------------------------

    def _patch(self, name: str, body: Mapping[str, Any], namespace: str | None) -> TrainingJob:
        with api_errors():
            raw = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self._ns(namespace), PLURAL, name, dict(body)
            )
        return build.parse(raw)

    def patch(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        namespace: str | None = None,
    ) -> TrainingJob:
        """Change the job with a JSON merge patch (camelCase keys; None removes a key).

        The result is validated locally first; rules about changes (immutable fields) are
        the API server's, which answers with a ``ValidationError`` naming the field.
        """
        body: dict[str, Any] = {}
        if spec:
            body["spec"] = dict(spec)
        metadata = {k: dict(v) for k, v in (("labels", labels), ("annotations", annotations)) if v}
        if metadata:
            body["metadata"] = metadata
        current = self.get(name, namespace=namespace).to_manifest()
        build.validated(build.merge_patch(current, body))
        return self._patch(name, body, namespace)

    def stop(
        self,
        name: str,
        reason: str | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        namespace: str | None = None,
    ) -> TrainingJob:
        """Stop the job after a checkpoint (``spec.suspend: true``); its checkpoints are kept.

        ``reason`` is recorded in the ``kubetrain.io/stop-reason`` annotation. With ``wait``,
        returns once the job is Stopped (``PollTimeoutError`` after ``timeout`` seconds).
        """
        job = self.get(name, namespace=namespace)
        if _finished(job):
            raise ConflictError(f"trainingjob {name!r} is {job.status.phase}; nothing to stop")
        body: dict[str, Any] = {"spec": {"suspend": True}}
        if reason:
            body["metadata"] = {"annotations": {STOP_REASON_ANNOTATION: reason}}
        job = self._patch(name, body, namespace)
        if not wait:
            return job
        return self._wait(
            name,
            done=_stopped,
            what="phase Stopped",
            timeout=timeout,
            namespace=namespace,
            poll_interval=None,
        )

    def resume(
        self, name: str, checkpoint_id: str | None = None, *, namespace: str | None = None
    ) -> TrainingJob:
        """Resume a stopped job from ``checkpoint_id`` (an id of ``checkpoints``), else the latest.

        Also retries a job that Failed on a problem of its spec (such as a missing
        checkpoint) once that is fixed. A job that is already running is left as it is.
        """
        job = self.get(name, namespace=namespace)
        failed = job.status.condition("Failed")
        if job.status.phase is Phase.COMPLETED or (
            job.status.phase is Phase.FAILED
            and (failed is None or failed.reason not in SPEC_ERRORS)
        ):
            raise ConflictError(f"trainingjob {name!r} is {job.status.phase}; it cannot resume")
        if checkpoint_id is not None:
            known = [c.id for c in job.status.checkpoints]
            if checkpoint_id not in known:
                available = ", ".join(known) or "none yet"
                raise NotFoundError(
                    f"trainingjob {name!r} has no checkpoint {checkpoint_id!r}; "
                    f"available: {available}"
                )
        running = not job.spec.suspend and job.status.phase is not Phase.FAILED
        if running and checkpoint_id is None:
            return job
        if running:
            raise ConflictError(
                f"trainingjob {name!r} is not stopped; stop it before resuming from "
                f"checkpoint {checkpoint_id!r}"
            )
        body = {
            "metadata": {"annotations": {STOP_REASON_ANNOTATION: None}},
            "spec": {"suspend": False, "resumeFrom": checkpoint_id},
        }
        return self._patch(name, body, namespace)

    def cancel(
        self, name: str, keep_checkpoints: bool = False, *, namespace: str | None = None
    ) -> Cancelled:
        """Delete the job; its Pods stop and, unless kept, its checkpoint claim is deleted.

        ``keep_checkpoints`` first removes the job's ownerReference from the checkpoint
        PersistentVolumeClaim (``<name>-checkpoints``) so garbage collection leaves it: a new
        job can then train on from it with ``checkpoint.existingClaimName``. A claim the job
        was given with ``existingClaimName`` is never deleted either way.
        """
        ns = self._ns(namespace)
        job = self.get(name, namespace=ns)
        kept: str | None = None
        if job.spec.checkpoint.existing_claim_name:
            kept = job.spec.checkpoint.existing_claim_name
        elif keep_checkpoints:
            kept = children.detach_claim(self.api_client, job, ns)
        options = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=job.metadata.uid),
        )
        with api_errors():
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, body=options
            )
        return Cancelled(name=name, namespace=ns, kept_claim=kept)

    # -- wait and watch ----------------------------------------------------------------------

    def watch(
        self,
        name: str | None = None,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        timeout: float | None = None,
        resync_seconds: float = DEFAULT_RESYNC_SECONDS,
    ) -> Iterator[Snapshot]:
        """The jobs (by ``namespace/name``) now and after every change, for ``timeout`` seconds.

        Driven by a Kubernetes watch: a snapshot arrives as soon as a job changes.
        """
        watcher = JobWatch(
            self.custom,
            None if all_namespaces else self._ns(namespace),
            name=name,
            resync_seconds=resync_seconds,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        return watcher.snapshots(deadline)

    def _wait(
        self,
        name: str,
        *,
        done: Callable[[TrainingJob], bool],
        what: str,
        timeout: float | None,
        namespace: str | None,
        poll_interval: float | None,
    ) -> TrainingJob:
        ns = self._ns(namespace)
        last: TrainingJob | None = None
        for jobs in self.watch(
            name,
            namespace=ns,
            timeout=timeout,
            resync_seconds=poll_interval or DEFAULT_RESYNC_SECONDS,
        ):
            last = jobs.get(f"{ns}/{name}")
            if last is None:
                raise NotFoundError(f"trainingjob {name!r} not found in namespace {ns!r}")
            if done(last):
                return last
        phase = last.status.phase.value if last and last.status.phase else None
        raise PollTimeoutError(name, timeout or 0.0, phase, what)

    def wait_for_completion(
        self,
        name: str,
        timeout: float | None = None,
        *,
        namespace: str | None = None,
        poll_interval: float | None = None,
    ) -> TrainingJob:
        """Block until the job Completed or Failed and return it (check ``status.phase``).

        Driven by a watch; ``poll_interval`` is how often the job is also re-listed in full
        (a safety net, default 60s). After ``timeout`` seconds raises ``PollTimeoutError``;
        the job is not touched and keeps running. A stopped job is waited on until resumed.
        """
        return self._wait(
            name,
            done=_finished,
            what="Completed or Failed",
            timeout=timeout,
            namespace=namespace,
            poll_interval=poll_interval,
        )

    # -- logs --------------------------------------------------------------------------------

    def worker_pod(self, name: str, worker: int = 0, *, namespace: str | None = None) -> str:
        """The name of the current Pod of worker ``worker`` (of the latest attempt)."""
        return children.worker_pod(self.core, self._ns(namespace), name, worker)

    def logs(
        self,
        name: str,
        worker: int = 0,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        namespace: str | None = None,
    ) -> Iterator[str]:
        """Lines of the trainer's log in worker ``worker``'s Pod; ``follow`` streams new ones.

        The API server fetches logs from the node's kubelet; when it cannot, the error
        (a ``KubetrainError``) says so.
        """
        ns = self._ns(namespace)
        pod = self.worker_pod(name, worker, namespace=ns)
        return children.log_lines(self.core, ns, pod, follow=follow, tail_lines=tail_lines)

    # -- the trained model --------------------------------------------------------------------

    def download_model(
        self,
        name: str,
        dest: str | Path,
        *,
        namespace: str | None = None,
        progress: download.Progress | None = None,
        timeout: float = 600.0,
        image: str = download.DEFAULT_IMAGE,
    ) -> Path:
        """Put job ``name``'s trained model into the new or empty directory ``dest``: from
        status.model.uri where it was published, else off the job's checkpoint volume (exec
        into a short-lived Pod of ``image``, the operator's by default); checked against the
        reported digest, and ``dest`` filled only once it all is. Returns ``dest``."""
        job = self.get(name, namespace=namespace)
        model = job.status.model
        if model is None or not model.path:
            phase = job.status.phase.value if job.status.phase else "new"
            raise NotFoundError(f"trainingjob {name!r} has no trained model yet (phase {phase})")
        target = download.fresh(Path(dest))
        if model.uri:
            with download.staged(target) as part:
                download.from_uri(model.uri, part, progress)
                download.check(part, model.digest)
        else:
            download.from_volume(
                self.core, job, model, target, image=image, timeout=timeout, progress=progress
            )
        return target

    def training_log(
        self,
        name: str,
        *,
        namespace: str | None = None,
        timeout: float = 120.0,
        image: str = download.DEFAULT_IMAGE,
    ) -> builtins.list[dict[str, Any]]:
        """The per-step metrics job ``name``'s trainer wrote to its volume (loss, learning
        rate, ... by step), read through a short-lived Pod of ``image``."""
        job = self.get(name, namespace=namespace)
        return download.train_log(self.core, job, image=image, timeout=timeout)

    # -- cost --------------------------------------------------------------------------------

    def catalogue(self) -> tuple[Catalogue, str, str | None]:
        """The operator's GPU catalogue, its source (cluster or defaults) and any warning."""
        try:
            with api_errors():
                config_map = self.core.read_namespaced_config_map(
                    self.config_map, self.config_namespace
                )
            text = (config_map.data or {}).get(cost.CONFIG_KEY)
            if text is None:
                raise KubetrainError(f"it has no key {cost.CONFIG_KEY}")
            return cost.catalogue_from_config(text), cost.SOURCE_CLUSTER, None
        except (KubetrainError, ValueError) as err:
            where = f"ConfigMap {self.config_namespace}/{self.config_map}"
            warning = (
                f"could not read the GPU catalogue from {where} ({err}); using built-in prices"
            )
            return Catalogue(), cost.SOURCE_DEFAULTS, warning

    def estimate(
        self,
        gpu_type: str | None,
        workers: int = 1,
        gpus_per_worker: int = 1,
        hours: float | None = None,
    ) -> cost.CostEstimate:
        """Hourly (and, with ``hours``, total) cost of a job, at this cluster's prices.

        When the operator's catalogue cannot be read the built-in prices are used: a
        ``CatalogueFallbackWarning`` is issued and ``source`` is ``defaults``.
        """
        catalogue, source, warning = self.catalogue()
        if warning:
            warnings.warn(warning, cost.CatalogueFallbackWarning, stacklevel=2)
        return cost.estimate(
            catalogue, gpu_type, workers, gpus_per_worker, hours, source=source, warning=warning
        )
