"""Demo data for `make run`: an operator, a demo user with one key, a ready `nebula-7b` and a
ready embedding model (`all-minilm-l6-v2`, real)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from infra.errors import InvalidRequest
from keys.access import SYSTEM
from keys.services import key_create
from models_registry.services import model_seed_ready


class Command(BaseCommand):
    help = "Create demo data if missing (idempotent) and print how to use it."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        operator, _ = users.objects.get_or_create(
            username=settings.NEBULA_OPERATOR_USERNAME,
            defaults={"is_staff": True, "is_superuser": True, "email": "operator@example.com"},
        )
        password = settings.NEBULA_OPERATOR_PASSWORD
        if password and not operator.check_password(password):
            operator.set_password(password)
            operator.save(update_fields=["password"])
        demo, _ = users.objects.get_or_create(username=settings.NEBULA_DEMO_USERNAME)
        demo_password = settings.NEBULA_DEMO_PASSWORD
        if demo_password and not demo.check_password(demo_password):
            demo.set_password(demo_password)
            demo.save(update_fields=["password"])
        model, _ = model_seed_ready(
            owner=operator,
            name="nebula-7b",
            params_billions=7,
            gpu_type="H100-80GB",
            replicas=2,
            max_concurrent_seqs=16,
        )
        try:
            embedder, _ = model_seed_ready(
                owner=operator, name="all-minilm-l6-v2", kind="embedding", gpu_type="L4"
            )
            embedding_line = f"{embedder.name} ({embedder.state}, /v1/embeddings)"
        except InvalidRequest as refused:  # NEBULA_GPU_INVENTORY has no room for it
            embedding_line = f"not deployed: {refused.message}"
        secret = None
        if not demo.api_keys.exists():
            secret = key_create(actor=SYSTEM, owner=demo, name="demo key").secret
        out = self.stdout.write
        out(f"Operator login:  {operator.get_username()} / {password or '(unchanged)'}")
        out(f"Demo user login: {demo.get_username()} / {demo_password or '(unchanged)'}")
        out(f"Model:           {model.name} ({model.state}, {model.gpu_type} × {model.replicas})")
        out(f"Embedding model: {embedding_line}")
        if secret:
            out(f"Demo API key (shown once, save it now): {secret}")
        else:
            out("Demo API key:    shown on the first run only; manage keys on the dashboard")
