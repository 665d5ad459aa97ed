"""Running the real `nft` binary inside a namespace: `nsenter --net=/proc/self/fd/N nft -f -`,
ruleset on stdin.

The namespace is opened and checked first (`netns.open_namespace`: no symlink, not the host's)
and entered by that descriptor, passed to nsenter: `ip netns exec NAME` would open the name
again, following symlinks. No shell, ever: argv is a list and the namespace name has passed
`check_namespace`. `nft` (and `nsenter`) are looked up on PATH at each call, so a changed PATH
takes effect at once. With `-j`,
nft 1.0.6 reads `-f` input as JSON, so JSON listings pass the command as argv words instead
(`nft -j list table inet cthm`); those words must be plain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from cthm.netfilter.errors import (
    NamespaceNotPermitted,
    NftError,
    NftOther,
    UnsafeValue,
    translate_error,
)
from cthm.netfilter.model import shown
from cthm.netfilter.netns import NETNS_DIR, open_namespace
from cthm.netfilter.runner import DEFAULT_TIMEOUT

_PLAIN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SubprocessRunner:
    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, netns_dir: Path = NETNS_DIR) -> None:
        self.timeout = timeout
        self._netns_dir = netns_dir

    def argv(self, fd: int, commands: str, *, json: bool, dry_run: bool) -> list[str]:
        """The exact argv `run` executes in the namespace open as `fd` (stdin is `commands`
        unless json)."""
        argv = [*enter_argv(fd), which("nft")]
        if dry_run:
            argv.append("-c")
        if json:
            words = commands.split()
            if not words or "\n" in commands.strip() or not all(map(_PLAIN_WORD.fullmatch, words)):
                raise UnsafeValue(f"JSON output is for one plain command, not {shown(commands)}")
            return [*argv, "-j", *words]
        return [*argv, "-f", "-"]

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        fd, _ = open_namespace(namespace, self._netns_dir)
        try:
            return run_argv(
                self.argv(fd, commands, json=json, dry_run=dry_run),
                program="nft",
                namespace=namespace,
                stdin=None if json else commands,
                timeout=self.timeout,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to release: each call is its own process."""


NSENTER_EPERM = "Operation not permitted"  # strerror(EPERM) in the C locale the tools get


def enter_argv(fd: int) -> list[str]:
    """The argv prefix that runs a program in the network namespace open as `fd` (which the
    caller passes to the child with `pass_fds`)."""
    return [which("nsenter"), f"--net=/proc/self/fd/{fd}", "--"]


def run_in_namespace(
    namespace: str,
    argv: list[str],
    *,
    program: str,
    stdin: str | None,
    timeout: float,
    netns_dir: Path = NETNS_DIR,
) -> str:
    """`run_argv` of argv inside the namespace, entered by the descriptor `open_namespace`
    checked (NamespaceNotFound, UnsafeNamespace before anything runs)."""
    fd, _ = open_namespace(namespace, netns_dir)
    try:
        return run_argv(
            [*enter_argv(fd), *argv],
            program=program,
            namespace=namespace,
            stdin=stdin,
            timeout=timeout,
            pass_fds=(fd,),
        )
    except NftError as exc:
        # nsenter's own setns(2) refused (no CAP_SYS_ADMIN): the tool never ran.
        if exc.message.startswith("nsenter: reassociate") and NSENTER_EPERM in exc.message:
            raise NamespaceNotPermitted(namespace, exc.message.strip()) from exc
        raise
    finally:
        os.close(fd)


def run_argv(
    argv: list[str],
    *,
    program: str,
    namespace: str,
    stdin: str | None,
    timeout: float,
    pass_fds: tuple[int, ...] = (),
) -> str:
    """Runs a netfilter tool's argv (no shell) and returns its stdout; every failure is
    translated in one place into the NftError hierarchy, carrying the tool's message."""
    # The C locale: error classes are recognised by strerror's English text.
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            pass_fds=pass_fds,
        )
    except subprocess.TimeoutExpired as exc:
        message = f"{program} did not finish within {timeout:g} s in namespace {namespace}"
        raise NftOther(message, namespace=namespace) from exc
    except OSError as exc:
        raise NftOther(f"cannot run {argv[0]}: {exc}", namespace=namespace) from exc
    if done.returncode != 0:
        failure = subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        message = done.stderr or f"{program} exited with status {done.returncode}"
        raise translate_error(message, namespace=namespace) from failure
    return done.stdout


def which(program: str) -> str:
    """`program`'s path on PATH now (a changed PATH takes effect at once)."""
    path = shutil.which(program)
    if path is None:
        raise NftOther(f"{program} not found on PATH ({os.environ.get('PATH', '')})")
    return path
