"""The Celery app. Workers: `celery -A nebula_site worker --pool threads`.

Simulated inference sleeps far more than it computes, so a thread pool runs many sequences per
process; prefork would need a process per concurrent sequence.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nebula_site.settings")

app = Celery("nebula")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
