"""`--devices N`: start N ranks of this very command on this machine, as `torchrun --standalone` does, but keep the
CLI contract: a bad input is still one line on stderr and exit code 2, not one line per rank and a launcher traceback.

Rank 0 writes to this terminal; the other ranks' output is kept in temporary files and shown only when such a rank
fails on its own. When one rank fails, the others get a few seconds to fail alike (a bad input fails every rank),
then SIGTERM (they may wait for it in a collective), then SIGKILL. SIGTERM sent to the launcher is passed on to every
rank, so a pre-empted job still checkpoints; Ctrl-C reaches them from the terminal.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

INTERRUPTED = 130      # sslkit's exit code after SIGINT/SIGTERM (a checkpoint was written)
SETTLE_SECONDS = 3.0   # once a rank has failed, the time the others get to fail on their own (the same bad input)
GRACE_SECONDS = 20.0   # then, after SIGTERM, the time they get to stop before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: IO[bytes], lines: int = 20) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace").rstrip().splitlines()
    errors = [line for line in text if line.startswith("error: ")]
    return errors[-1] if errors else "\n".join(text[-lines:])


def launch_local(n: int, args: list[str], program: tuple[str, ...] = (sys.executable, "-m", "sslkit")) -> int:
    """Run `python -m sslkit ARGS` as ranks 0..n-1 of one process group on this machine; returns the exit code of
    the first rank to fail (2 for a refused input), or 0."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n), "GROUP_RANK": "0"}
    cmd = [*program, *args]
    procs: list[subprocess.Popen] = []
    logs: list[IO[bytes] | None] = []
    for rank in range(n):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        log = None if rank == 0 else tempfile.TemporaryFile()
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None))
        logs.append(log)

    def forward(signum: int, _frame: object = None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # SIGTERM (a scheduler's pre-emption) is passed on; Ctrl-C already reaches every rank from the terminal
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward), signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    culprit, failed_at, stopping = None, 0.0, False
    try:
        while [p.poll() for p in procs].count(None):        # poll every rank (any() would stop at the first)
            if culprit is None:
                culprit = next((r for r, p in enumerate(procs) if p.returncode not in (None, 0)), None)
                failed_at = time.monotonic()
            elif not stopping and time.monotonic() - failed_at > SETTLE_SECONDS:
                stopping = True             # the others did not fail alongside it: they may wait for it in a collective
                forward(signal.SIGTERM)
            elif time.monotonic() - failed_at > SETTLE_SECONDS + GRACE_SECONDS:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    try:
        if codes[0] > 0 and codes[0] != INTERRUPTED:   # rank 0 failed on its own and has said why, on this terminal
            return codes[0]
        failed = [r for r in ([culprit] if culprit is not None else []) + list(range(n)) if codes[r] != 0]
        if not failed:
            return 0
        rank = failed[0]
        if not (rank == 0 or codes[rank] == INTERRUPTED == codes[0]):      # stopped together: said once already
            print(_tail(logs[rank]), file=sys.stderr, flush=True)
        code = codes[rank]
        return code if code > 0 else 128 - code        # killed by signal N: 128 + N, as a shell reports it
    finally:
        for log in logs:
            if log is not None:
                log.close()
