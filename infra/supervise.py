"""`bin/run`'s process manager: every process of the Procfile, supervised by supervisord.

A crashed process (a worker killed by the OOM killer, say) is started again while the others
keep serving; Ctrl-C or SIGTERM stops them all, each with its whole process group, and leaves
nothing behind. A process that cannot start at all (its port is taken, its settings are bad)
stops everything rather than leave a service without, say, its web process: supervisord gives
up on it after a few tries (FATAL) and the listener below ends supervisord.

    python -m infra.supervise run [--only NAME ...] [--run-dir DIR] [--env-file FILE] Procfile
    python -m infra.supervise listen --run-dir DIR     (supervisord starts this one itself)

The Procfile stays the one list of processes (`name: command`, run by bash, so `${VAR:-default}`
works), for this, for the systemd units and the compose file in deploy/. With `--only` and a
single name, that command is exec'd directly: no supervisor, one process (the standalone
layout). Variables from the env file reach the commands unless the environment has them
already, as in the settings (real environment variables win).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from environs import Env
from supervisor import childutils

# How supervisord runs each process. A process counts as started once it has lived
# START_SECONDS; one that dies sooner is retried START_RETRIES times (1 s, 2 s, ... apart) and
# then given up (FATAL). A process that dies after it started is restarted at once, every time.
# Generous: on a busy machine daphne spends several seconds importing Django before it even
# tries its port (measured: over 3 s, which made a taken port a restart loop, never FATAL).
START_SECONDS = 10
START_RETRIES = 3
# The listener's note that it gave up on a process (so `run` exits with an error).
GAVE_UP = "gave-up"
# Ctrl-C / SIGTERM: SIGTERM to the process group, SIGKILL to it after this many seconds
# (a Celery worker's warm shutdown waits for its running streams; this bounds that wait).
STOP_WAIT_SECONDS = 10

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class ProcfileError(ValueError):
    pass


def procfile_parse(text: str) -> dict[str, str]:
    """`name: command` lines, in order; blank lines and `#` comments are skipped."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        if not colon or not _NAME.match(name) or not command:
            raise ProcfileError(f"Procfile line {number} is not `name: command`: {raw!r}")
        if name in processes:
            raise ProcfileError(f"Procfile line {number}: {name!r} is defined twice")
        processes[name] = command
    return processes


def _value(text: str) -> str:
    """A value for supervisord's config: its parser expands `%(name)s`, so `%` is doubled."""
    return text.replace("%", "%%")


def supervisord_config(
    *,
    processes: dict[str, str],
    run_dir: Path,
    directory: Path,
    python: str,
    password: str,
    as_root: bool = False,
) -> str:
    """supervisord's configuration: in the foreground, its own activity and every process's
    output on its standard output (which bin/run's caller sees), a control socket in `run_dir`
    for `supervisorctl` (with `password`), and the FATAL listener."""
    run_dir = run_dir.resolve()
    socket = _value(str(run_dir / "supervisor.sock"))
    credentials = ["username=nebula", f"password={_value(password)}"]
    lines = [
        "; Written by `python -m infra.supervise` from the Procfile at each start; edits are lost.",
        "[supervisord]",
        "nodaemon=true",
        # Every writer opens standard output for appending (its activity log here, each
        # process's output below): written through the inherited descriptor as well, lines
        # would overwrite each other when it is a file (`make run > log`).
        "silent=true",
        "logfile=/dev/stdout",
        "logfile_maxbytes=0",
        f"pidfile={_value(str(run_dir / 'supervisord.pid'))}",
        f"childlogdir={_value(str(run_dir))}",
        "loglevel=info",
        # Said outright, so supervisord does not warn that it kept root's privileges.
        *(["user=root"] if as_root else []),
        "",
        "[unix_http_server]",
        f"file={socket}",
        "chmod=0700",
        *credentials,
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket}",
        *credentials,
        "",
    ]
    for name, command in processes.items():
        # bash for the Procfile's `${VAR:-default}`; exec, so the pid supervisord watches and
        # signals is the server's own.
        argv = shlex.join(["/bin/bash", "-c", f"exec {command}"])
        lines += [
            f"[program:{name}]",
            f"command={_value(argv)}",
            f"directory={_value(str(directory))}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={START_SECONDS}",
            f"startretries={START_RETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_WAIT_SECONDS}",
            # The whole group: nothing a process started outlives it.
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=/dev/stdout",
            "stdout_logfile_maxbytes=0",
            "",
        ]
    listener = shlex.join([python, "-m", "infra.supervise", "listen", "--run-dir", str(run_dir)])
    lines += [
        "[eventlistener:nebula-give-up]",
        f"command={_value(listener)}",
        f"directory={_value(str(directory))}",
        "events=PROCESS_STATE_FATAL",
        "autorestart=true",
        "stderr_logfile=/dev/stderr",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    return "\n".join(lines)


def listen(*, run_dir: Path) -> NoReturn:
    """supervisord's event listener: when a process is given up for good (FATAL), stop
    supervisord, which stops the rest (a half-started service is worse than none), and leave
    a note for `run` to exit with an error."""
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers.get("eventname") == "PROCESS_STATE_FATAL":
            name = childutils.get_headers(payload).get("processname", "?")
            (run_dir / GAVE_UP).write_text(name)
            print(
                f"Nebula: {name} could not be started (see above); stopping everything.",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getppid(), signal.SIGTERM)
        childutils.listener.ok(sys.stdout)


def supervise(config: Path, run_dir: Path) -> int:
    """Run supervisord until it exits; our exit status says whether a process was given up.

    supervisord runs as our child rather than in our place so that status can be told. A
    signal that would stop us goes to it (in a terminal, Ctrl-C reaches it directly as well:
    a second SIGINT during its shutdown changes nothing)."""
    (run_dir / GAVE_UP).unlink(missing_ok=True)
    supervisord = str(Path(sys.executable).with_name("supervisord"))
    # Our own supervisord and the config we just wrote: no input from anyone else.
    child = subprocess.Popen([supervisord, "--nodaemon", "--configuration", str(config)])  # noqa: S603
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda received, _: child.send_signal(received))
    status = child.wait()
    gave_up = run_dir / GAVE_UP
    if gave_up.exists():
        # supervisord appended to our output through handles of its own: write after it (our
        # descriptor's offset is where we left it, when the output is a file).
        with contextlib.suppress(OSError):
            os.lseek(sys.stderr.fileno(), 0, os.SEEK_END)
        print(f"Nebula stopped: {gave_up.read_text()} could not be started.", file=sys.stderr)
        return 1
    return status


def run(*, procfile: Path, only: list[str], run_dir: Path, env_file: Path | None) -> NoReturn:
    processes = procfile_parse(procfile.read_text())
    unknown = [name for name in only if name not in processes]
    if unknown:
        raise ProcfileError(f"{procfile} has no process named {', '.join(unknown)}")
    if only:
        processes = {name: processes[name] for name in only}
    if env_file is not None and env_file.exists():
        Env().read_env(str(env_file), recurse=False, override=False)
    if len(processes) == 1 and only:
        [command] = processes.values()
        # The Procfile's command, as `bash -c` runs it under supervisord (and honcho did).
        os.execv("/bin/bash", ["/bin/bash", "-c", f"exec {command}"])  # noqa: S606
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = run_dir / "supervisord.conf"
    config.touch(mode=0o600)  # it holds the control socket's password
    config.write_text(
        supervisord_config(
            processes=processes,
            run_dir=run_dir,
            directory=procfile.resolve().parent,
            python=sys.executable,
            password=secrets.token_urlsafe(18),
            as_root=os.geteuid() == 0,
        )
    )
    sys.exit(supervise(config, run_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.supervise", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="run the Procfile's processes under supervisord")
    start.add_argument("procfile", type=Path)
    start.add_argument("--only", action="append", default=[], help="just this process")
    start.add_argument("--run-dir", type=Path, default=Path(".run"))
    start.add_argument("--env-file", type=Path)
    listener = commands.add_parser("listen", help="supervisord's FATAL event listener")
    listener.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "listen":
        listen(run_dir=args.run_dir)
    try:
        run(procfile=args.procfile, only=args.only, run_dir=args.run_dir, env_file=args.env_file)
    except ProcfileError as error:
        parser.exit(2, f"{error}\n")


if __name__ == "__main__":
    main()
