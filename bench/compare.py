"""`--compare REV`: the same scenarios against an earlier commit, in the same run, so a change
is judged against the code before it on the same machine in the same minutes (two runs an
hour apart on a shared machine differ by more than most changes do).

The earlier commit is checked out with `git worktree add --detach` into the bench cache
(`.cache/bench/rev-<sha>`, kept for the next run) and started by `bench.stack.Stack` exactly
as this commit is, with the project's venv. Its data (migrations, the user, the key, the
model) is prepared by that checkout's own `bench.__main__.prepare_data`, in a process of its
own, because the services it calls change their signatures from commit to commit. An older
commit that cannot be checked out, prepared or started is reported, not fatal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.stack import ROOT

CACHE = ROOT / ".cache" / "bench"
_PREPARED = "BENCH_PREPARED "
# Run inside the earlier checkout (its own code on sys.path: `python -c` puts the cwd first).
_PREPARE = (
    "import json\n"
    "from bench.__main__ import prepare_data\n"
    "key_id, secret = prepare_data()\n"
    f"print({_PREPARED!r} + json.dumps([key_id, secret]), flush=True)\n"
)


class Unavailable(Exception):
    """The earlier commit could not be checked out, prepared or started; the message says why."""


def _git(*args: str, cwd: Path = ROOT, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"git {args[0]}: {error}") from error
    if done.returncode != 0:
        raise Unavailable(f"git {' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def resolve(rev: str, repo: Path = ROOT) -> str:
    """The full commit id `rev` names (a branch, tag, `HEAD~1`, a short id)."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)
    except Unavailable as error:
        raise Unavailable(f"{rev!r} names no commit here") from error


def checkout_path(sha: str, cache: Path = CACHE) -> Path:
    return cache / f"rev-{sha[:12]}"


def checkout(sha: str, cache: Path = CACHE, repo: Path = ROOT) -> Path:
    """A detached worktree at `sha` in the cache: reused when it is already there at that
    commit, made anew otherwise."""
    path = checkout_path(sha, cache)
    if path.exists():
        try:
            if _git("rev-parse", "HEAD", cwd=path) == sha:
                return path
        except Unavailable:
            pass
        # Something else is there (an interrupted checkout): start over.
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=repo,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(path, ignore_errors=True)
        _git("worktree", "prune", cwd=repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    _git("worktree", "add", "--detach", str(path), sha, cwd=repo, timeout=300)
    return path


def parse_prepared(output: str) -> tuple[int, str]:
    """The (key id, secret) line the preparation printed."""
    for line in reversed(output.splitlines()):
        if line.startswith(_PREPARED):
            key_id, secret = json.loads(line.removeprefix(_PREPARED))
            return int(key_id), str(secret)
    raise Unavailable("its prepare_data printed no key")


def prepare(path: Path, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Migrate a fresh database for the checkout at `path` and create its bench user, key and
    model, with that checkout's own code. Returns (key id, secret)."""
    if not (path / "bench" / "__main__.py").exists():
        raise Unavailable("it has no bench/__main__.py to prepare its data with")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PREPARE],
            cwd=path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise Unavailable(f"preparing its data took over {timeout:.0f} s") from error
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"preparing its data failed: {last[0]}")
    return parse_prepared(done.stdout)
