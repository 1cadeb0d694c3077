"""Run folders: resolved recipe, manifest, metrics, checkpoints, exported encoder, plots.

    runs/<name>/
      recipe.yaml  manifest.json  metrics.jsonl
      checkpoints/last.pt  encoder/{encoder.safetensors,config.json}  plots/loss.png
      .sslkit-lock       held (flock) by the one command writing the run: pid, host, start time, command
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from sslkit.core import distributed
from sslkit.core.files import atomic_write_text, check_writable, environment_error
from sslkit.core.errors import UserError
from sslkit.core.recipes import Recipe, recipe_to_yaml


def git_sha() -> str | None:
    """Commit of the sslkit source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_fingerprint(paths: list[Path], limit: int = 20000) -> dict[str, Any]:
    """Hash of file names, sizes and mtimes (not contents: cheap on terabytes)."""
    digest = hashlib.sha256()
    count = total = 0
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files[:limit]:
            st = f.stat()
            digest.update(f"{f}|{st.st_size}|{int(st.st_mtime)}".encode())
            count += 1
            total += st.st_size
    return {"sha256": digest.hexdigest()[:16], "files": count, "bytes": total,
            "paths": [str(Path(p).resolve()) for p in paths]}


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import sslkit

    return {"sslkit": sslkit.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__}


# A run folder that --overwrite replaces is moved aside, not deleted, until the command ends (`settle_replaced`):
# a command that fails part-way puts the old run back instead of leaving a half-written one in its place.
_REPLACED: dict[Path, Path] = {}


def _set_aside(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    _REPLACED[folder] = aside


_CREATED: list[Path] = []     # run folders this command made

# One command writes a run at a time: an advisory flock on `<run>/.sslkit-lock`, taken by rank 0 before anything is
# checked or written and held until the command ends. The kernel drops it when the process exits in any way (kill -9
# included), so a lock is never stale; the file's text (pid, host, start, command) only names the holder.
LOCK_NAME = ".sslkit-lock"
_LOCKS: dict[Path, int] = {}  # resolved run folder -> fd of its lock file, held by this process


def _holder(lock: Path) -> str:
    """Who holds `lock`, from the text it wrote: "pid 123 on host (since 12:00:01: sslkit toy pretrain ...)"."""
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = f"since {info['started']}: " if info.get("started") else ""
    return f"pid {info['pid']} on {info.get('host', 'an unknown host')} ({since}{info.get('command', 'sslkit')})"


def lock_run(folder: Path) -> str | None:
    """Take the run folder's lock for this process, or return why not (a one-line message naming the holder).

    Held until `release_locks` (the end of the command) or the process's exit. A filesystem without flock (some
    network mounts) is warned about and the run goes on unlocked rather than not at all."""
    try:
        import fcntl
    except ImportError:                   # no flock on this platform (Windows): nothing to hold
        return None

    key = Path(folder).resolve()
    if key in _LOCKS:                     # this process has it already (the Python API opening a run twice)
        return None
    lock = key / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        return f"cannot write in run folder {folder} ({exc.strerror}) — fix its permissions or choose another --out"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return (f"run folder {folder} is in use by {_holder(lock)} — wait for it to end, or stop it (Ctrl-C or "
                    f"kill; its last checkpoint is kept) and continue with --resume; use another --out for a separate run")
        from sslkit.core.console import warn

        warn(f"cannot lock run folder {folder} ({exc.strerror}): make sure no other command writes into it")
        return None
    info = {"pid": os.getpid(), "host": platform.node(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["sslkit", *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _LOCKS[key] = fd
    return None


def release_locks() -> None:
    """Drop the run-folder locks this process holds (the end of a command)."""
    for fd in _LOCKS.values():
        try:
            os.close(fd)        # closing the only descriptor releases the flock
        except OSError:
            pass
    _LOCKS.clear()


def _lock_everywhere(folder: Path, recheck: Callable[[], str | None] | None = None) -> None:
    """Rank 0 takes the lock (then runs `recheck` under it); every rank stops with its refusal (the others never
    touch the lock file)."""
    refusal = (lock_run(folder) or (recheck() if recheck else None)) if distributed.is_main() else None
    refusal = distributed.broadcast_object(refusal)
    if refusal:
        raise UserError(str(refusal))


def _exists_message(folder: Path) -> str:
    return (f"run folder {folder} already exists — pass --overwrite to replace it, --resume to continue it, "
            "or choose another --out")


def _run_files(folder: Path) -> list[Path]:
    """What a run folder holds besides its lock file (an empty list: a new run may go there)."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME] if folder.is_dir() else []


def settle_runs(ok: bool) -> None:
    """At the end of a command: delete the run folders --overwrite set aside (`ok`), or, when the command failed,
    remove the new half-written folder and put the old one back; a run folder the failed command made and that holds
    no checkpoint to resume from (bad input found late, a crash before the first checkpoint) is removed too."""
    for folder, aside in _REPLACED.items():
        if ok:
            shutil.rmtree(aside, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(aside, folder)
    if not ok:
        for folder in _CREATED:
            if folder not in _REPLACED and not (folder / "checkpoints" / "last.pt").exists():
                shutil.rmtree(folder, ignore_errors=True)
    _REPLACED.clear()
    _CREATED.clear()
    release_locks()


class Run:
    """A run folder; rank 0 alone writes to it."""

    def __init__(self, path: Path) -> None:
        self.dir = Path(path)
        self.created_now = False

    @property
    def replacing(self) -> bool:
        """True while this run stands in for one --overwrite set aside (put back if the command fails)."""
        return self.dir in _REPLACED

    def discard_if_empty(self) -> None:
        """Remove a folder this process just created when training failed before any checkpoint."""
        if self.created_now and distributed.is_main() and not self.checkpoint_path.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- creation -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        out: Path | None,
        *,
        domain: str,
        recipe: Recipe,
        command: list[str] | None = None,
        data_paths: list[Path] = (),
        overwrite: bool = False,
        resume: bool = False,
    ) -> Run:
        """Create (or re-open for --resume) a run folder; all ranks agree on its path."""
        distributed.init_distributed(distributed.select_device(recipe.train.device))
        if overwrite and resume:
            raise UserError("--overwrite and --resume contradict each other — pick one")
        if out is None:
            if resume:
                raise UserError("--resume needs --out pointing at the run folder to continue")
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{domain}-{recipe.method}-{stamp}"
            out = Path(distributed.broadcast_object(str(out)))
        run = cls(Path(out))
        if run.dir.exists() and not run.dir.is_dir():
            raise UserError(f"--out {run.dir} is a file — give a folder for the run")
        if resume and not run.dir.is_dir():
            raise UserError(f"--resume: there is no run folder {run.dir} — start the run without --resume")
        if run.dir.is_dir():        # before any check: another command may be writing it right now
            _lock_everywhere(run.dir)
        exists = bool(_run_files(run.dir))
        if resume:
            if not run.checkpoint_path.is_file():
                raise UserError(f"--resume: no checkpoint at {run.checkpoint_path} — start a new run without --resume")
            saved = run.recipe_dict
            if saved.get("domain") != domain:
                raise UserError(f"--resume: {run.dir} is a {saved.get('domain')} run, not {domain} — pick a {domain} run")
            run._check_resumable(recipe, data_paths)
        elif exists and not overwrite:
            raise UserError(_exists_message(run.dir))
        else:
            check_writable(run.dir, "--out")
        distributed.barrier()
        run.created_now = not resume
        record = (domain, recipe, list(command or sys.argv), list(data_paths))
        if resume:          # written once fit() has checked the checkpoint against the model (`confirm_resume`)
            run._pending_resume = record
        else:
            if distributed.is_main():
                if exists and overwrite:
                    _set_aside(run.dir)
                run.dir.mkdir(parents=True, exist_ok=True)
                aside = _REPLACED.get(run.dir)
                if aside is not None and (aside / LOCK_NAME).exists():
                    os.replace(aside / LOCK_NAME, run.dir / LOCK_NAME)   # the held lock comes along with it
            # a new folder, or one a racing command filled between the check above and now
            _lock_everywhere(run.dir, lambda: _exists_message(run.dir) if not exists and _run_files(run.dir) else None)
            if distributed.is_main():
                (run.dir / "checkpoints").mkdir(exist_ok=True)
                (run.dir / "metrics.jsonl").unlink(missing_ok=True)
                run._write_record(*record, resume=False)
                _CREATED.append(run.dir)
        distributed.barrier()
        return run

    def confirm_resume(self) -> None:
        """After the checkpoint was loaded into the model: record the resumed recipe (with any new --set) and the
        resume in the manifest. A resume that fails before this (a recipe the checkpoint does not fit) leaves the run
        folder as it was, so it can still be resumed with its own recipe."""
        pending, self._pending_resume = getattr(self, "_pending_resume", None), None
        if pending is not None and distributed.is_main():
            self._write_record(*pending, resume=True)

    def _write_record(self, domain: str, recipe: Recipe, command: list[str], data_paths: list[Path],
                      resume: bool) -> None:
        atomic_write_text(self.dir / "recipe.yaml", recipe_to_yaml(recipe))
        self._write_manifest(domain, recipe, command, data_paths, resume)

    def _check_resumable(self, recipe: Recipe, data_paths: list[Path]) -> None:
        """--resume continues the same run: the same data (the paths; changed files are only warned about) and a
        train.steps beyond the checkpoint's step."""
        from sslkit.core.checkpoint import load_checkpoint

        before = self.manifest.get("data") or {}
        if data_paths and before.get("paths"):
            now = data_fingerprint([Path(p) for p in data_paths])
            if now["paths"] != before["paths"]:
                raise UserError(f"--resume: {self.dir} was trained on {', '.join(before['paths'])}, not "
                                f"{', '.join(now['paths'])} — resume with the same data, or start a new run")
            if now["sha256"] != before.get("sha256"):
                from sslkit.core.console import warn

                count = (f"{before.get('files')} → {now['files']} files" if before.get("files") != now["files"]
                         else "file sizes or modification times")
                warn(f"the data under {', '.join(now['paths'])} changed since {self.dir} was started ({count}); "
                     "resuming on it as it is now")
        step = load_checkpoint(self.checkpoint_path)["step"]
        if step >= recipe.train.steps:
            raise UserError(f"--resume: {self.dir} is already at step {step} of train.steps={recipe.train.steps} — "
                            f"pass --set train.steps=N with N > {step} to train further")

    def _write_manifest(self, domain: str, recipe: Recipe, command: list[str], data_paths, resume: bool) -> None:
        import torch

        previous = self.manifest if resume else {}
        manifest = {
            **previous,        # on resume the domain's facts (volumes, skipped files, …) stay until it updates them
            "domain": domain,
            "method": recipe.method,
            "created": previous.get("created", _dt.datetime.now().isoformat(timespec="seconds")),
            "resumed": previous.get("resumed", []) + ([_dt.datetime.now().isoformat(timespec="seconds")] if resume else []),
            "command": list(command),
            "cwd": os.getcwd(),
            "host": platform.node(),
            "git_sha": git_sha(),
            "versions": _versions(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "world_size": distributed.dist_env().world_size,
            "data": data_fingerprint([Path(p) for p in data_paths]) if data_paths else None,
        }
        atomic_write_text(self.dir / "manifest.json", json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, path: Path, domain: str | None = None) -> Run:
        """An existing run (for embed/evaluate/export); checks it belongs to `domain`."""
        run = cls(Path(path))
        if not (run.dir / "recipe.yaml").is_file():
            raise UserError(f"{run.dir} is not an sslkit run folder (no recipe.yaml) — pass the folder `pretrain` wrote")
        if domain is not None and run.recipe_dict.get("domain") != domain:
            raise UserError(f"{run.dir} is a {run.recipe_dict.get('domain')} run, not {domain} — pass a {domain} run")
        return run

    # -- contents -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def recipe_dict(self) -> dict[str, Any]:
        path = self.dir / "recipe.yaml"
        if not path.is_file():
            raise UserError(f"{self.dir} has no recipe.yaml — it is not an sslkit run folder")
        return yaml.safe_load(path.read_text())

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def update_manifest(self, **fields: Any) -> None:
        """Add domain facts (skipped files, preprocessing summary) to manifest.json."""
        if distributed.is_main():
            atomic_write_text(self.dir / "manifest.json", json.dumps({**self.manifest, **fields}, indent=2))

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def log(self, record: dict[str, Any]) -> None:
        if distributed.is_main():
            try:
                with open(self.dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as exc:
                message = environment_error(exc, self.dir / "metrics.jsonl",
                                            f"free some space, then continue from the last checkpoint with "
                                            f"`--resume --out {self.dir}` (same command)")
                if message is None:
                    raise
                raise UserError(message) from exc

    def metrics(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
