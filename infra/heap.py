"""Keeping the garbage collector off what a server process builds once, at startup."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move every object alive now into the collector's permanent generation.

    A Nebula process starts with some 130,000 long-lived objects (modules, classes, URL
    patterns, settings, the ORM's metadata). Each full collection walked all of them: pauses of
    30 to 170 ms, several times a second under load, which set the web process's p99 latency
    (`make bench`, docs/BENCHMARKS.md). These objects live as long as the process anyway;
    frozen, they are never scanned again. Call it once, when startup is over.
    """
    gc.collect()
    gc.freeze()
