"""Service health: is the database answering, is Redis, is any worker alive?"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection

from inference.heartbeats import live_workers
from infra.redis_client import REDIS_ERRORS, get_redis

PROCESS_STARTED = time.time()


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        result: dict[str, Any] = {"ok": True}
        if detail:
            result.update(detail)
    except Exception as error:  # a health check reports failures, it never raises
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis() -> None:
    get_redis().ping()


def health_report(*, detailed: bool) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {"database": _timed(_database), "redis": _timed(_redis)}
    workers: list[Any] = []

    def _workers() -> dict[str, Any]:
        nonlocal workers
        workers = live_workers()
        if not workers:
            raise RuntimeError("no worker has reported a heartbeat recently")
        return {"live": len(workers)}

    if checks["redis"]["ok"]:
        checks["workers"] = _timed(_workers)
    else:
        checks["workers"] = {"ok": False, "error": "unknown: Redis is unreachable"}
    if detailed and workers:
        checks["workers"]["workers"] = [
            {
                "id": w["id"],
                "host": w["host"],
                "pid": w["pid"],
                "busy": w["busy"],
                "concurrency": w["concurrency"],
            }
            for w in workers
        ]
    ok = all(check["ok"] for check in checks.values())
    failing = [name for name, check in checks.items() if not check["ok"]]
    return ok, {
        "status": "ok" if ok else "unavailable",
        "failing": failing,
        "uptime_seconds": round(time.time() - PROCESS_STARTED, 1),
        "version": settings.NEBULA_VERSION,
        "mode": "standalone" if settings.NEBULA_STANDALONE else "distributed",
        "checks": checks,
    }


__all__ = ["REDIS_ERRORS", "health_report"]
