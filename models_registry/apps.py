from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from models_registry.gpus import inventory_errors


class ModelsRegistryConfig(AppConfig):
    name = "models_registry"
    verbose_name = "Model deployments"

    def ready(self) -> None:
        # A typo in the inventory would silently mean "no such GPUs": stop instead.
        if errors := inventory_errors(settings.NEBULA_GPU_INVENTORY):
            raise ImproperlyConfigured(f"NEBULA_GPU_INVENTORY: {'; '.join(errors)}.")
