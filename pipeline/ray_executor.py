"""The Ray executor: one worker actor per device, each with one resident student, pulling items as it finishes them.

Placement is per phase: `run` starts the workers (one GPU each on GPU nodes, `executor.cpus_per_worker` CPUs each
on CPU machines, fractional allowed), keeps `executor.in_flight` items queued on each, and kills them when the phase
ends, so teacher sampling and the M-step find the devices free. A worker process that dies is restarted by Ray (at
most `executor.max_restarts` times) and its items go back to the queue for any worker; an item that raises is
retried up to `executor.max_tries` times, then reported as failed. A restarted worker must answer a ping within
`executor.ping_timeout_s`; one that cannot start again, or stays silent, counts as another death, so a worker that
will never come back uses up its restarts instead of holding the phase open. With no worker left, the items not
yet scored are reported as failed and the phase ends.

Ray is an optional extra (`pip install 'seal-tt[ray]'`), imported only here. With `executor.address` unset a local
cluster is started in this process (no dashboard, a small object store); `address=auto` or `host:port` joins one
started with `ray start --head`.
"""

from __future__ import annotations

import os
import socket
from collections import deque

from core.config import ExecutorSettings, LoraSettings, ModelSettings
from core.errors import UserError
from pipeline.work import Failure, WorkItem, make_scorer, one_line


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("executor.kind=ray needs Ray, which is not installed: pip install 'seal-tt[ray]' "
                        "(or executor.kind=local)") from None
    return ray


class StudentWorker:
    """The actor: a resident student at a pinned thread count (Ray would set it from the worker's CPUs, and the
    thread count changes float sums, so records would differ from the local executor's)."""

    def __init__(self, task, student: ModelSettings, lora: LoraSettings, threads: int):
        import torch

        torch.set_num_threads(threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.scorer = make_scorer(task, student, lora)

    def score(self, item: WorkItem):
        return self.scorer.score(item), self.name

    def ping(self) -> str:
        return self.name


class RayExecutor:
    name = "ray"

    def __init__(self, task, lora: LoraSettings, settings: ExecutorSettings):
        self.task = task
        self.lora = lora
        self.settings = settings
        self.ray = import_ray()
        self._started_here = False

    def connect(self):
        ray, s = self.ray, self.settings
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if s.address:
                    ray.init(address=s.address, **kwargs)
                else:
                    # "local": a new cluster even where another runs on this machine (Ray would join the latest).
                    ray.init(address="local", num_cpus=s.num_cpus, object_store_memory=s.object_store_mb * 2**20,
                             **kwargs)
                    self._started_here = True
            except ConnectionError as err:
                raise UserError(f"executor.address={s.address!r}: no Ray cluster there ({one_line(err)})") from None
        return ray

    def placement(self) -> tuple[int, float, float]:
        """(workers, CPUs each, GPUs each) for the cluster as it is now."""
        ray, s = self.ray, self.settings
        total = ray.cluster_resources()
        gpus = s.gpus_per_worker if s.gpus_per_worker is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
        if s.workers is not None:
            n = s.workers
        elif gpus > 0:
            n = int(total.get("GPU", 0) // gpus)
        else:
            n = int(total.get("CPU", 1) // s.cpus_per_worker)
        if n < 1:
            raise UserError(f"the Ray cluster ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs) has no room "
                            f"for one worker of {s.cpus_per_worker:g} CPUs and {gpus:g} GPUs")
        need_cpu, need_gpu = n * s.cpus_per_worker, n * gpus
        if need_cpu > total.get("CPU", 0) + 1e-9 or need_gpu > total.get("GPU", 0) + 1e-9:
            # Ray would queue the extra workers forever; say it now instead.
            raise UserError(f"{n} workers of {s.cpus_per_worker:g} CPUs and {gpus:g} GPUs need {need_cpu:g} CPUs and "
                            f"{need_gpu:g} GPUs; the cluster has {total.get('CPU', 0):g} and {total.get('GPU', 0):g} "
                            "(lower executor.workers or executor.cpus_per_worker)")
        return n, s.cpus_per_worker, gpus

    def run(self, student: ModelSettings, items: list[WorkItem]):
        if not items:
            return
        import time

        import torch

        ray, s = self.connect(), self.settings
        n, cpus, gpus = self.placement()
        n = min(n, len(items))
        threads = s.threads_per_worker or torch.get_num_threads()
        actor_cls = ray.remote(StudentWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=s.max_restarts,
                                                      max_task_retries=0)
        actors = [actor_cls.remote(self.task, student, self.lora, threads) for _ in range(n)]
        deaths = [0] * n
        lives = [0] * n  # which incarnation of worker i an item went to: one death is counted once
        ready = [True] * n  # False from a death until the restarted worker answers a ping
        load = [0] * n
        pending = deque(items)
        tries: dict[str, int] = {}
        seen_on: dict[str, list[str]] = {}
        in_flight: dict = {}  # ref -> (worker, item or None for a ping, incarnation)
        back_by: dict[int, float] = {}  # restarting worker -> when its silence counts as another death

        def alive(i):
            return deaths[i] <= s.max_restarts

        def ping(i):
            in_flight[actors[i].ping.remote()] = (i, None, lives[i])

        def died(i, final=False):
            """One more death of worker i (`final`: Ray will not restart it); it gets no items until a ping says it
            is back."""
            deaths[i] = s.max_restarts + 1 if final else deaths[i] + 1
            lives[i] += 1
            ready[i] = False
            back_by.pop(i, None)
            if alive(i):
                back_by[i] = time.monotonic() + s.ping_timeout_s
                ping(i)

        def feed():
            for i in range(n):
                while alive(i) and ready[i] and load[i] < s.in_flight and pending:
                    item = pending.popleft()
                    in_flight[actors[i].score.remote(item)] = (i, item, lives[i])
                    load[i] += 1

        try:
            feed()
            while in_flight or pending:
                if not in_flight:
                    # Every worker used up its restarts (an alive, unready worker always has a ping out).
                    error = (f"no Ray worker left: every worker died more than executor.max_restarts={s.max_restarts} "
                             "times; see the Ray logs (/tmp/ray/session_latest/logs)")
                    while pending:
                        item = pending.popleft()
                        yield item, None, Failure(item.key, tries.get(item.key, 0), error, error,
                                                  seen_on.get(item.key, []))
                    break
                wait = max(0.0, min(back_by.values()) - time.monotonic()) if back_by else None
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait)
                if not done:  # a restart hangs, or the worker cannot be placed again
                    now = time.monotonic()
                    for i in [i for i, due in back_by.items() if due <= now]:
                        for ref in [r for r, (w, it, _) in in_flight.items() if w == i and it is None]:
                            del in_flight[ref]
                        died(i)
                    feed()
                    continue
                (ref,) = done
                i, item, life = in_flight.pop(ref)
                if item is None:  # a ping to a restarting worker
                    try:
                        ray.get(ref)
                        ready[i] = True
                        back_by.pop(i, None)
                    except ray.exceptions.ActorUnavailableError:  # still restarting
                        if time.monotonic() < back_by[i]:
                            time.sleep(0.5)
                            ping(i)
                        else:
                            died(i)
                    except ray.exceptions.ActorDiedError:  # its restart raised, or Ray gave up on it
                        died(i, final=True)
                    except ray.exceptions.RayError:
                        died(i)
                    feed()
                    continue
                load[i] -= 1
                try:
                    rec, worker = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the item raised inside a live worker
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, UserError):
                        raise cause from None
                    failure = self._retry(item, tries, seen_on, pending, one_line(cause or err), str(err),
                                          f"worker {i}")
                    if failure is not None:
                        yield item, None, failure
                except ray.exceptions.RayError as err:  # the worker died (or is restarting) with the item
                    if life == lives[i]:
                        # The first news of this death: the item it was running is charged a try; the others
                        # queued on that worker go back to the queue free, and the worker gets no more until it
                        # answers a ping after its restart.
                        died(i)
                        failure = self._retry(item, tries, seen_on, pending, f"worker died: {one_line(err)}",
                                              str(err), f"worker {i}")
                        if failure is not None:
                            yield item, None, failure
                    else:
                        pending.appendleft(item)
                else:
                    rec.setdefault("timings", {})["worker"] = worker
                    yield item, rec, None
                feed()
        finally:
            # Released at the end of every phase, so the next phase (sampling, M-step) has the devices.
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def _retry(self, item, tries, seen_on, pending, error: str, detail: str, worker: str) -> Failure | None:
        tries[item.key] = tries.get(item.key, 0) + 1
        seen_on.setdefault(item.key, []).append(worker)
        if tries[item.key] >= self.settings.max_tries:
            return Failure(item.key, tries[item.key], error, detail, seen_on[item.key])
        pending.appendleft(item)  # next free worker, ahead of the rest
        return None

    def release(self) -> None:
        """Workers are killed at the end of each `run`; nothing else holds a device."""

    def close(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
