"""Settings for the test run: the project's settings, pointed at test-only Redis and databases.

NEBULA_TEST_REDIS_DB (default 15) picks the Redis database and suffixes the test database names,
so two test runs on one machine (say, two people's checkouts) do not step on each other.
"""

import os

_slot = os.environ.get("NEBULA_TEST_REDIS_DB", "15")
os.environ["REDIS_URL"] = os.environ.get("NEBULA_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_slot}")
os.environ["NEBULA_TEST_SQLITE"] = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), f".test-db-{_slot}.sqlite3"
)
os.environ.setdefault("NEBULA_SIM_TIME_SCALE", "0")
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.pop("NEBULA_STANDALONE", None)
# Every test client comes from 127.0.0.1: a suite's worth of deliberate 401s must not add up to
# the per-address limit (the tests of that limit set their own).
os.environ.setdefault("NEBULA_UNAUTHENTICATED_RPM", "1000000")

from nebula_site.settings import *  # noqa: E402, F403
from nebula_site.settings import DATABASES  # noqa: E402

if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("TEST", {})["NAME"] = (
        f"test_{DATABASES['default']['NAME']}_{_slot}"
    )
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
AXES_ENABLED = False

# In the pytest process, Celery tasks run eagerly (unit tests); the live servers the integration
# tests start (NEBULA_LIVE_SERVER=1) send them to their real workers.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("NEBULA_LIVE_SERVER") != "1"
