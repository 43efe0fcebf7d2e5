from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "API keys"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_save

        from keys.signals import user_saved

        post_save.connect(user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="keys-user")
