"""ASGI entry point: HTTP (the /v1 API on a lean handler, everything else on Django's) and
websockets (the dashboard's live pages), served by daphne."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nebula_site.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()  # sets Django up before anything imports models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from infra.heap import freeze_startup_heap  # noqa: E402
from infra.http_server import harden_daphne  # noqa: E402
from infra.middleware import ApiASGIHandler  # noqa: E402
from infra.websocket_origin import SameOriginValidator  # noqa: E402
from nebula_site.routing import websocket_urlpatterns  # noqa: E402

harden_daphne()  # daphne imports this module before it starts listening
api_app = ApiASGIHandler()
_LEAN_PREFIXES = ("/v1/", "/bench/")


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    app = api_app if scope["path"].startswith(_LEAN_PREFIXES) else django_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Same origin (scheme, host and port) or CSRF_TRUSTED_ORIGINS: see infra.websocket_origin.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

if settings.NEBULA_STANDALONE:
    # No Redis, no Celery: this process is also the worker.
    from inference.jobs import LocalQueueConsumer
    from inference.runner import completion_execute
    from inference.workers import start_worker_runtime
    from telemetry.retention import rollup_thread_start

    runtime = start_worker_runtime()
    LocalQueueConsumer(lambda job: completion_execute(job, runtime)).start()
    rollup_thread_start()  # what Celery beat does in the distributed layout

# Startup is over: keep the collector off everything built so far (see infra.heap).
freeze_startup_heap()
