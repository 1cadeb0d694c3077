"""The root CLI: help is light and fast, errors are one line with exit code 2, recipes, doctor."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import sslkit_cmd

HEAVY = ["monai", "openslide", "open3d", "torch_geometric", "torchaudio"]


def test_help_lists_domains_and_imports_no_heavy_library():
    code = ("import sys, runpy; sys.argv=['sslkit','--help'];\n"
            "try:\n    runpy.run_module('sslkit', run_name='__main__')\nexcept SystemExit: pass\n"
            f"bad=[m for m in {HEAVY!r} if m in sys.modules]; print('HEAVY', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    for name in ("medical3d", "pathology", "audio", "graph", "lidar", "tabular", "doctor", "recipes"):
        assert name in out.stdout


@pytest.mark.parametrize("domain", ["medical3d", "pathology", "audio", "graph", "lidar", "tabular", "toy"])
def test_every_domain_has_help(domain):
    out = sslkit_cmd(domain, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_every_domain_is_built_and_lists_its_verbs():
    top = sslkit_cmd("--help")
    assert top.returncode == 0 and "not built" not in top.stdout + top.stderr
    for domain, verbs in {"audio": ("pretrain", "embed", "evaluate", "export", "sample-data"),
                          "pathology": ("tile", "pretrain", "embed", "evaluate", "mil", "export", "sample-data")}.items():
        out = sslkit_cmd(domain, "--help")
        assert out.returncode == 0, out.stderr
        assert all(v in out.stdout for v in verbs), (domain, out.stdout)


def test_usage_errors_exit_2_not_as_internal_errors():
    # one line, like every other refusal (not Click's usage block), naming the command's --help
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--no-such-flag"),
                     "No such option: --no-such-flag — see `sslkit toy pretrain --help`")
    _one_line_exit_2(sslkit_cmd("recipes", "show"), "Missing argument 'name'")
    _one_line_exit_2(sslkit_cmd("--nope"), "No such option: --nope — see `sslkit --help`")        # the root's own
    _one_line_exit_2(sslkit_cmd("nosuchdomain"), "No such command 'nosuchdomain'")
    _one_line_exit_2(sslkit_cmd("toy", "evaluate", ".", "--seeds", "0"), "--seeds")


def test_version():
    out = sslkit_cmd("--version")
    assert out.returncode == 0 and out.stdout.startswith("sslkit ")


def test_doctor_reports_versions_and_extras():
    out = sslkit_cmd("doctor", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert set(info["domains"]) == {"medical3d", "pathology", "audio", "graph", "lidar", "tabular"}
    assert info["domains"]["tabular"]["ok"] is True
    assert {"pydicom", "gdcm", "itk"} <= set(info["domains"]["medical3d"]["modules"])   # DICOM codecs, NRRD/MHA
    assert "openpyxl" in info["domains"]["tabular"]["modules"]                          # Excel tables
    assert info["audio_scan_kernel"] == "C kernel" or info["audio_scan_kernel"].startswith("PyTorch (")
    off = json.loads(sslkit_cmd("doctor", "--json", env={"SSLKIT_SCAN_KERNEL": "0"}).stdout)
    assert off["audio_scan_kernel"] == "PyTorch (turned off by SSLKIT_SCAN_KERNEL)"


def test_recipes_list_show_copy(tmp_path):
    out = sslkit_cmd("recipes", "list", "--domain", "toy")
    assert out.returncode == 0 and "toy/tiny" in out.stdout
    show = sslkit_cmd("recipes", "show", "toy/tiny")
    assert "method: vicreg" in show.stdout
    copied = sslkit_cmd("recipes", "copy", "toy/tiny", str(tmp_path))
    assert copied.returncode == 0
    assert (tmp_path / "tiny.yaml").read_text() == show.stdout
    again = sslkit_cmd("recipes", "copy", "toy/tiny", str(tmp_path))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # a recipe that extends another: the file as written, or with every inherited key (--resolved)
    child = sslkit_cmd("recipes", "show", "audio/tera-inv-fsdd")
    assert "extends: tera-fsdd" in child.stdout and "n_mels" not in child.stdout
    full = yaml.safe_load(sslkit_cmd("recipes", "show", "audio/tera-inv-fsdd", "--resolved").stdout)
    base = yaml.safe_load(sslkit_cmd("recipes", "show", "audio/tera-fsdd").stdout)
    assert "extends" not in full and full["method"] == "tera-inv" and full["data"] == base["data"]


def _one_line_exit_2(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out.stderr


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")),
                     "missing.npy")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--recipe", "nosuch"), "choose one of")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.lrr=1"), "valid keys under 'train'")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.steps=abc"), "train.steps")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", str(tmp_path / "nothing"), "--resume"), "no run folder")
    # recipe values out of range are refused before a run folder (default: runs/...) is made
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.steps=0", cwd=tmp_path), "train.steps")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.batch_size=0", cwd=tmp_path), "train.batch_size")
    if not torch.backends.mps.is_available():
        _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.device=mps", cwd=tmp_path), "MPS")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--set", "train.device=banana", cwd=tmp_path), "not a device")
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_exit_2(sslkit_cmd("toy", "embed", str(empty), "--out", str(tmp_path / "e.parquet")), "not an sslkit run")


def test_run_folder_is_never_overwritten_without_flag(tmp_path):
    run = tmp_path / "run"
    first = sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=5")
    assert first.returncode == 0, first.stderr
    before = (run / "checkpoints" / "last.pt").read_bytes()
    second = sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=5")
    _one_line_exit_2(second, "--overwrite")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    third = sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=5", "--set", "train.seed=1", "--overwrite")
    assert third.returncode == 0
    replaced = (run / "checkpoints" / "last.pt").read_bytes()
    assert replaced != before
    # --overwrite with a run that fails part-way (the loss diverges): the run it was to replace comes back whole
    fourth = sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=5", "--set", "train.lr=1e12",
                        "--set", "train.clip_grad=null", "--overwrite")
    assert fourth.returncode == 2 and "error: loss became nan" in fourth.stderr, fourth.stderr
    assert "the run --overwrite was to replace is put back" in fourth.stderr      # not "the checkpoint is kept"
    assert (run / "checkpoints" / "last.pt").read_bytes() == replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]          # nothing set aside is left behind

    # --resume of a finished run says so instead of training zero steps
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", str(run), "--resume"), "already at step 5")
    # a resume the checkpoint does not fit is refused and leaves the run as it was, so it can still be resumed
    files = {f: (run / f).read_bytes() for f in ("recipe.yaml", "manifest.json")}
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", str(run), "--resume", "--set", "train.steps=8",
                                "--set", "model.out_dim=16"), "does not fit")
    assert {f: (run / f).read_bytes() for f in files} == files
    resumed = sslkit_cmd("toy", "pretrain", "--out", str(run), "--resume", "--set", "train.steps=8", "-r", "tiny")
    assert resumed.returncode == 0, resumed.stderr
    assert "--recipe is not read with --resume" in " ".join(resumed.stderr.split())   # said, not silently ignored
    # a new run that fails before its first checkpoint leaves no folder behind
    res = sslkit_cmd("toy", "pretrain", "--out", str(tmp_path / "new"), "--set", "train.lr=1e12",
                     "--set", "train.clip_grad=null")
    assert res.returncode == 2 and "loss became nan" in res.stderr and not (tmp_path / "new").exists()
    # export to a path that is a file
    (tmp_path / "e.parquet").write_bytes(b"x")
    _one_line_exit_2(sslkit_cmd("toy", "export", str(run), "--out", str(tmp_path / "e.parquet"), "--overwrite"),
                     "is a file")
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", str(tmp_path / "e.parquet")), "is a file")
    if Path("/proc").is_dir():          # a place nothing can be written (a probe, not os.access: root passes that)
        _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", "/proc/sslkit-run"), "cannot write in /proc")


def test_corrupt_checkpoint_on_resume(tmp_path):
    run = tmp_path / "run"
    assert sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=5").returncode == 0
    ck = run / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    _one_line_exit_2(sslkit_cmd("toy", "pretrain", "--out", str(run), "--resume"), "corrupt")


def test_toy_end_to_end_pretrain_embed_evaluate_export(tmp_path):
    run = tmp_path / "run"
    out = sslkit_cmd("toy", "pretrain", "--out", str(run))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(run)
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "checkpoints/last.pt", "encoder/config.json",
                 "plots/loss.png"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["torch"] == torch.__version__ and "toy" in manifest["command"]
    emb = sslkit_cmd("toy", "embed", str(run), "--out", str(tmp_path / "e.parquet"))
    assert emb.returncode == 0, emb.stderr
    from sslkit.core.embeddings import read_embeddings

    ids, z = read_embeddings(tmp_path / "e.parquet")
    assert z.shape == (2048, 32) and list(ids[:3]) == [0, 1, 2]
    ev = sslkit_cmd("toy", "evaluate", str(run), "--seeds", "2", "--json")
    assert ev.returncode == 0, ev.stderr
    res = json.loads(ev.stdout)
    # the pretrained encoder must organise the clusters better than chance (8 classes -> 0.125)
    assert res["embeddings"]["knn_acc"][0] > 0.5
    ev = sslkit_cmd("toy", "evaluate", str(run), "--seeds", "1")          # without --json: the report's path
    assert ev.returncode == 0 and ev.stdout.strip() == str(run / "evaluation.json"), ev.stdout
    exp = sslkit_cmd("toy", "export", str(run), "--out", str(tmp_path / "exported"))
    assert exp.returncode == 0, exp.stderr
    import sslkit

    enc = sslkit.load_encoder(tmp_path / "exported")
    x = torch.randn(4, 32)
    ref = sslkit.load_encoder(run)
    assert torch.allclose(enc(x), ref(x))
    # every domain's export is the same shared command, and it refuses another domain's run
    wrong = sslkit_cmd("graph", "export", str(run), "--out", str(tmp_path / "wrong"))
    _one_line_exit_2(wrong, "is a toy run, not graph")
    assert not (tmp_path / "wrong").exists()
    helps = {d: sslkit_cmd(d, "export", "--help").stdout for d in ("toy", "graph", "lidar", "medical3d", "tabular")}
    assert all("sslkit.load_encoder(DIR)" in h and "--overwrite" in h for h in helps.values()), helps
    assert "pillar/BEV" in helps["lidar"] and "preprocessing" in helps["tabular"]


def test_resume_uses_the_runs_own_recipe(tmp_path):
    run = tmp_path / "run"
    assert sslkit_cmd("toy", "pretrain", "--out", str(run), "--set", "train.steps=6",
                      "--set", "model.out_dim=8").returncode == 0
    # without repeating --set model.out_dim=8, resume must still build the same model (and extend steps)
    out = sslkit_cmd("toy", "pretrain", "--out", str(run), "--resume", "--set", "train.steps=8")
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 8


def test_notes_and_warnings_come_from_rank_0_only(monkeypatch, capsys):
    """Under torchrun every rank finds and reads the same data: its notes must be said once, not once per rank."""
    from sslkit.core.console import info, warn

    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        info("reading t.csv as semicolon-separated")
        warn("3 of 3 volumes look like MRI")
        err = capsys.readouterr().err
        assert ("semicolon-separated" in err and "look like MRI" in err) is said
        assert bool(err.strip()) is said


def test_a_full_disk_anywhere_in_a_command_is_one_line_not_an_internal_error(tmp_path, monkeypatch):
    """Writers outside core.files (safetensors' export, matplotlib's plots) raise a bare OSError: the CLI names it."""
    import errno

    import safetensors.torch

    from tests.conftest import cli_in_process

    assert cli_in_process("toy", "pretrain", "--out", tmp_path / "run", "--set", "train.steps=2").returncode == 0

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "enc" / "encoder.safetensors"))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    res = cli_in_process("toy", "export", tmp_path / "run", "--out", tmp_path / "enc")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "no space left" in lines[0].lower(), lines
    assert "internal error" not in res.stderr
