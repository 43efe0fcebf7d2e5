"""Continuous batching: one engine loop per worker process advances every running sequence a
step at a time, as a serving engine's scheduler does on a GPU, instead of a thread per sequence.

A Celery pool thread claims its job and takes its GPU slot (inference.runner), then hands the
generation to the loop (`EngineLoop.generate`) and waits for it to end; the loop admits new
sequences at every step, gives them their first token before anything else (prefill first),
and sends every step's messages to Redis in one pipeline. At simulated GPU speed each sequence
keeps its own schedule (prefill time, then one decode step per token); with the time scale at
0 every sequence is always due, and the loop goes round them all, one token each, as fast as
the CPU allows.

Why: with a thread per sequence, 100 streams meant 100 threads taking turns on the GIL, each
making its own round trip to Redis for every batch of tokens, and Celery's consumer thread
(which takes new jobs in) waited behind them; a burst's first tokens came one job intake after
another (docs/BENCHMARKS.md). One loop spends far less per token and leaves the GIL free while
it waits on Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import redis
from django.conf import settings
from redis.exceptions import NoScriptError

from inference.engine import Generation, Step
from inference.jobs import PUBLISH, DeltaMessage, JobPayload

logger = logging.getLogger(__name__)

# Batching tokens into one message: when tokens come faster than this apart (time scale 0, or
# a tiny model), send every FLUSH_INTERVAL or FLUSH_TOKENS tokens; slower tokens go one by one.
FLUSH_INTERVAL = 0.002
FLUSH_TOKENS = 64
# How often a job with nothing to send (not streaming, or still in prefill) checks in: is it
# still wanted?
CHECK_INTERVAL = 0.05
# Sequences due within this much of each other take their step together.
_STEP_SLACK = 0.0005


class JobGone(Exception):
    """The job is no longer ours to run: cancelled, abandoned, or its web process died."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait on `condition` (held) for up to `timeout` seconds (None: until notified)."""


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        condition.wait(timeout)


@dataclass
class Outbox:
    """Deltas produced but not yet sent, merged per choice in order."""

    deltas: list[tuple[int, str]] = field(default_factory=list)
    finished: list[tuple[int, str]] = field(default_factory=list)
    # Per choice: `delta.tool_calls` fragments; a call's argument pieces merge into one.
    tool_calls: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    # Per choice, the logprobs of its merged deltas' tokens (DeltaMessage `lp`).
    logprobs: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    tokens: int = 0
    since: float = 0.0

    def add(self, step: Step, now: float) -> None:
        if not self.tokens:
            self.since = now
        for index, text in step.deltas:
            if self.deltas and self.deltas[-1][0] == index:
                self.deltas[-1] = (index, self.deltas[-1][1] + text)
            else:
                merged = next((i for i, (c, _) in enumerate(self.deltas) if c == index), None)
                if merged is None:
                    self.deltas.append((index, text))
                else:
                    self.deltas[merged] = (index, self.deltas[merged][1] + text)
        for index, fragment in step.tool_deltas:
            self._add_fragment(index, fragment)
        self.finished.extend(step.finished)
        for index, entries in step.logprobs:
            merged = next((i for i, (c, _) in enumerate(self.logprobs) if c == index), None)
            if merged is None:
                self.logprobs.append((index, list(entries)))
            else:
                self.logprobs[merged][1].extend(entries)
        self.tokens += 1

    def _add_fragment(self, index: int, fragment: dict[str, Any]) -> None:
        fragments = next((f for c, f in self.tool_calls if c == index), None)
        if fragments is None:
            self.tool_calls.append((index, [dict(fragment)]))
            return
        last = fragments[-1]
        # A header (it has the call's id) stays its own fragment, as OpenAI streams it.
        if "id" not in fragment and "id" not in last and last["index"] == fragment["index"]:
            pieces = last["function"]["arguments"] + fragment["function"]["arguments"]
            fragments[-1] = {"index": last["index"], "function": {"arguments": pieces}}
        else:
            fragments.append(dict(fragment))

    def clear(self) -> None:
        self.deltas, self.finished, self.tool_calls, self.logprobs = [], [], [], []
        self.tokens = 0


class Run(Protocol):
    """What the loop needs of a job's run (inference.runner.JobRun)."""

    job: JobPayload
    key: str
    owner: str
    seq: int
    ttft_ms: float | None
    itl_gaps: list[float]

    def delta_message(self, outbox: Outbox) -> DeltaMessage: ...

    @property
    def tokens_made(self) -> int: ...


class _Sequence:
    """A job's generation inside the loop."""

    def __init__(
        self, run: Run, generation: Generation, *, prefill: float, step: float, now: float
    ) -> None:
        self.run = run
        self.generation = generation
        self.steps: Iterator[Step] = generation.steps()
        self.stream = run.job["stream"]
        self.step_seconds = step
        self.outbox = Outbox()
        self.next_at = now + prefill
        self.next_check = now + CHECK_INTERVAL
        self.last_token = 0.0
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished.set()


class EngineLoop:
    """The worker process's engine: see the module's docstring."""

    def __init__(
        self, client_factory: Callable[[], redis.Redis], clock: Clock | None = None
    ) -> None:
        self._client_factory = client_factory
        self.clock: Clock = clock or RealClock()
        self._condition = threading.Condition()
        self._incoming: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def generate(self, run: Run, generation: Generation, *, prefill: float, step: float) -> None:
        """Generate `generation` for `run`, `prefill` seconds before its first token and `step`
        seconds per token after, sending its deltas as they come. Blocks until it is done;
        raises JobGone if the job stopped being wanted, Redis' errors if Redis failed, and
        whatever the engine raised."""
        with self._condition:
            sequence = _Sequence(
                run, generation, prefill=prefill, step=step, now=self.clock.monotonic()
            )
            self._incoming.append(sequence)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="nebula-engine", daemon=True
                )
                self._thread.start()
            self._condition.notify()
        sequence.finished.wait()
        if sequence.error is not None:
            raise sequence.error

    # --- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        client = self._client_factory()
        while True:
            with self._condition:
                while not self._incoming and not self._running:
                    self.clock.wait(self._condition, None)
                # New sequences go first: their first step (and first token) before anyone's
                # next one.
                fresh, self._incoming = self._incoming, []
                self._running[:0] = fresh
            try:
                self._step(client)
            except Exception:  # a bug in the loop itself: fail what runs, keep the loop alive
                logger.exception("engine loop step failed")
                for sequence in self._running:
                    sequence.fail(RuntimeError("the engine loop failed"))
                self._running = []
            self._sleep()

    def _step(self, client: redis.Redis) -> None:
        now = self.clock.monotonic()
        sends: list[tuple[_Sequence, DeltaMessage | None]] = []
        ended: list[_Sequence] = []
        due = []
        for sequence in self._running:
            if sequence.next_at <= now + _STEP_SLACK:
                due.append(sequence)
            elif now + _STEP_SLACK >= sequence.next_check:  # in prefill, or between slow tokens
                sequence.next_check = now + CHECK_INTERVAL
                sends.append((sequence, None))
        # A sequence with no simulated time per token (time scale 0) is always due: it takes
        # its share of the step's token budget, so that a step (and a newcomer's wait for its
        # first token) stays short however many run, and each step sends one message per
        # sequence. A sequence's first token comes alone, at once.
        share = max(1, settings.NEBULA_ENGINE_STEP_TOKENS // max(len(due), 1))
        for sequence in due:
            paced = sequence.step_seconds > 0 or sequence.run.ttft_ms is None
            tokens = 1 if paced else share
            try:
                for _ in range(tokens):
                    step = next(sequence.steps, None)
                    if step is None:
                        break
                    self._advance(sequence, step, now)
                    if sequence.generation.done:
                        break
            except Exception as error:
                sequence.fail(error)
                continue
            self._flush(sequence, now, sends, paced=paced)
            if sequence.generation.done or step is None:
                if sequence.stream and sequence.outbox.tokens:
                    sends.append((sequence, self._take(sequence)))
                ended.append(sequence)
        if sends:
            self._send(client, sends)
        for sequence in ended:
            if not sequence.finished.is_set():
                sequence.finished.set()
        self._running = [s for s in self._running if not s.finished.is_set()]

    def _advance(self, sequence: _Sequence, step: Step, now: float) -> None:
        run = sequence.run
        if run.ttft_ms is None:
            run.ttft_ms = (time.time() - run.job["enqueued_at"]) * 1000
        else:
            run.itl_gaps.append((now - sequence.last_token) * 1000)
        sequence.last_token = now
        # Keep the schedule (a late step does not push every later one back), but never plan
        # a step in the past: a loop that fell behind catches up one step at a time.
        sequence.next_at = max(sequence.next_at + sequence.step_seconds, now)
        if sequence.stream:
            sequence.outbox.add(step, now)

    def _flush(
        self,
        sequence: _Sequence,
        now: float,
        sends: list[tuple[_Sequence, DeltaMessage | None]],
        *,
        paced: bool,
    ) -> None:
        """Queue the sequence's message if it is due (the last batch goes out when its
        generation ends), or its check-in when it has nothing to send."""
        if sequence.stream:
            if sequence.generation.done or not sequence.outbox.tokens:
                return
            # Paced tokens: send now if the next token is a while off, or enough has piled
            # up; a share of a step: send it.
            due = (
                not paced
                or sequence.run.seq == 0
                or sequence.step_seconds > FLUSH_INTERVAL / 2
                or sequence.outbox.tokens >= FLUSH_TOKENS
                or now - sequence.outbox.since >= FLUSH_INTERVAL
            )
            if due:
                sends.append((sequence, self._take(sequence)))
                sequence.next_check = now + CHECK_INTERVAL
        elif now + _STEP_SLACK >= sequence.next_check:
            sequence.next_check = now + CHECK_INTERVAL
            sends.append((sequence, None))

    @staticmethod
    def _take(sequence: _Sequence) -> DeltaMessage:
        message = sequence.run.delta_message(sequence.outbox)
        sequence.outbox.clear()
        return message

    def _send(
        self, client: redis.Redis, sends: list[tuple[_Sequence, DeltaMessage | None]]
    ) -> None:
        """Every message of the step in one round trip; a job whose message found it no longer
        ours, or nobody listening, is gone."""
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for sequence, message in sends:
                run = sequence.run
                pipe.evalsha(
                    PUBLISH.sha,
                    1,
                    run.key,
                    run.job["reply_to"],
                    orjson.dumps(message) if message is not None else "",
                    run.owner,
                    run.tokens_made,
                )
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as error:
                for sequence, _ in sends:
                    sequence.fail(error)
                return
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                client.script_load(PUBLISH.source)
                continue
            break
        for (sequence, _), result in zip(sends, results, strict=True):
            if isinstance(result, Exception):
                sequence.fail(result)
            elif int(result) <= 0:
                sequence.fail(JobGone())

    def _sleep(self) -> None:
        """Until the next sequence is due, or a new one arrives."""
        with self._condition:
            if self._incoming:
                return
            if not self._running:
                return
            now = self.clock.monotonic()
            wake = min(min(s.next_at, s.next_check) for s in self._running)
            if wake - now > _STEP_SLACK:
                self.clock.wait(self._condition, wake - now)
        if not self._incoming:
            # Let Celery's consumer and the job threads in between steps, even when every
            # sequence is always due (time scale 0).
            time.sleep(0)
