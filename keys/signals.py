"""Keys stop working the moment their owner is deactivated: any change to a user (other than the
login timestamp) tells web processes to re-read the keys they cached."""

from __future__ import annotations

from typing import Any

from infra.epoch import epoch_bump_on_commit


def user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    epoch_bump_on_commit()
