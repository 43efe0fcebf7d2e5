from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from keys.models import ApiKey
from keys.tokens import is_well_formed, key_digest

pytestmark = pytest.mark.django_db


def test_createapikey_prints_the_secret_as_its_last_line(alice):
    out = StringIO()
    call_command(
        "createapikey",
        "--user",
        "alice",
        "--name",
        "ci",
        "--rpm",
        "60",
        "--tpm",
        "5000",
        "--model",
        "nebula-7b",
        stdout=out,
    )
    secret = out.getvalue().strip().splitlines()[-1]
    assert is_well_formed(secret)
    key = ApiKey.objects.get(digest=key_digest(secret))
    assert (key.owner, key.name, key.rpm_limit, key.tpm_limit) == (alice, "ci", 60, 5000)
    assert key.allowed_models == ["nebula-7b"]
    assert not key.is_admin


def test_createapikey_makes_admin_keys(operator):
    out = StringIO()
    call_command(
        "createapikey", "--user", operator.username, "--name", "ops", "--admin", stdout=out
    )
    assert ApiKey.objects.get().is_admin


def test_createapikey_refuses_unknown_users_and_bad_limits(alice):
    with pytest.raises(CommandError, match="No user"):
        call_command("createapikey", "--user", "nobody", "--name", "x")
    with pytest.raises(CommandError, match="rpm_limit"):
        call_command("createapikey", "--user", "alice", "--name", "x", "--rpm", "0")
    assert not ApiKey.objects.exists()


def test_createapikey_goes_through_the_service_the_api_uses(alice):
    from keys.access import SYSTEM
    from keys.services import team_create
    from telemetry.models import AuditEvent

    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    out = StringIO()
    call_command(
        "createapikey", "--user", "alice", "--name", "t", "--team", str(team.pk), stdout=out
    )
    key = ApiKey.objects.get(name="t")
    assert key.team == team
    event = AuditEvent.objects.get(action="key.create")
    assert (event.actor_label, event.after["team"]) == ("system", "ml")
    with pytest.raises(CommandError, match="No team"):
        call_command("createapikey", "--user", "alice", "--name", "x", "--team", "999")
