from django.apps import AppConfig


class NebulaSiteConfig(AppConfig):
    name = "nebula_site"
    verbose_name = "Nebula"
