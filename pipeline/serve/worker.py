"""One thread owns the model: the HTTP handlers queue jobs, this thread answers them one at a time.

One resident model answers one request at a time, so concurrency is a queue in front of it, bounded (`queue_size`)
so that a flood of requests is told to come back (503, Retry-After) instead of piling up memory and latency. The
store's committed state is checked between jobs (`Resident.refresh`), never during one.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from pipeline.serve.generate import Answer, Sampling, complete, context_length, render
from pipeline.serve.protocol import ApiError, ChatRequest, Limits


@dataclass
class Job:
    request: ChatRequest
    seen: object  # the store's committed state when the request arrived
    emit: Callable[[tuple], None]  # thread-safe: ("start", tag, prompt_tokens) | ("delta", text) | ("end", Answer)
    #                                 | ("error", ApiError); "error" or "end" is always the last event
    cancelled: threading.Event = field(default_factory=threading.Event)


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class Worker:
    def __init__(self, resident, limits: Limits, queue_size: int = 16):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.resident, self.limits = resident, limits
        self.jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self.busy = False
        self.served = 0
        self.mean_seconds = 1.0  # a running estimate of one answer's time, for Retry-After
        self.thread = threading.Thread(target=self._run, name="seal-tt-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(max(1, math.ceil(self.mean_seconds * (self.jobs.qsize() + 1)))) from None

    @property
    def queued(self) -> int:
        return self.jobs.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Stop after the jobs already queued (the server has finished its requests by then)."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join(timeout)

    # ------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its client left while it waited
                continue
            self.busy = True
            start = time.perf_counter()
            try:
                self._answer(job)
            except ApiError as err:
                job.emit(("error", err))
            except Exception as err:  # noqa: BLE001 - one bad request must not stop the server
                traceback.print_exc(file=sys.stderr)
                job.emit(("error", ApiError(500, f"the model failed on this request: {type(err).__name__}: {err}",
                                            type="server_error", code="internal_error")))
            finally:
                self.busy = False
                self.served += 1
                self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.perf_counter() - start)

    def _answer(self, job: Job) -> None:
        req, res = job.request, self.resident
        res.refresh(job.seen)
        if res.asker is None:
            raise ApiError(503, "the store was replaced and its new student could not be loaded (see the server's "
                                "log); retry later", type="server_error", code="model_unavailable",
                           headers={"Retry-After": "5"})
        prompt = render(res.tokenizer, req.messages)
        max_tokens = self._budget(len(prompt), req.max_tokens, context_length(res.model))
        with res.answering(req.question) as tag:
            job.emit(("start", tag, len(prompt)))
            answer: Answer = complete(
                res.model, res.tokenizer, prompt,
                Sampling(max_tokens, req.temperature, req.top_p, req.stop, req.seed),
                on_text=(lambda text: job.emit(("delta", text))) if req.stream else None,
                cancelled=job.cancelled.is_set)
        job.emit(("end", answer))

    def _budget(self, prompt: int, asked: int | None, context: int | None) -> int:
        """The most new tokens this answer may have; a prompt that leaves no room is the client's error."""
        limit = self.limits.max_tokens
        if context is None:
            return asked or limit
        if prompt >= context:
            raise ApiError(400, f"This model's maximum context length is {context} tokens; the messages are {prompt} "
                                "tokens. Shorten them.", param="messages", code="context_length_exceeded")
        if asked is not None and prompt + asked > context:
            raise ApiError(400, f"This model's maximum context length is {context} tokens; the messages are {prompt} "
                                f"tokens and {asked} were asked for the answer. Shorten the messages or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        return asked or min(limit, context - prompt)
