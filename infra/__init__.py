"""Platform code every app stands on: Redis clients and Lua scripts, the Celery broker
transport's fixes, daphne's hardening, database work from async code, the cache epoch, errors
in OpenAI's shape, logging with secrets redacted, the /v1 middleware chain."""
