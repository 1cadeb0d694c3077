"""End to end through the CLI on generated audio: pretrain (cache, mean/std, pictures), resume, two processes, embed
(clip and segment, ids as given), evaluate (baselines, groups), export + load_encoder, sample-data, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sslkit.cli import app
from tests.domains.audio.conftest import RECIPE

runner = CliRunner()


def invoke(*args: object):  # noqa: ANN201
    return runner.invoke(app, ["audio", *map(str, args)])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_pretrain_writes_cache_stats_encoder_and_pictures(tiny_run: Path, clips: Path) -> None:
    from sslkit.domains.audio.features import AudioData, compute_fbank
    from sslkit.domains.audio.io import find_audio, read_wave, to_rate

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    cfg = AudioData(**yaml.safe_load((tiny_run / "recipe.yaml").read_text())["data"])
    # mean/std computed independently over every frame and mel bin of every clip, as the dataset statistics must be
    frames = torch.cat([compute_fbank(to_rate(*read_wave(s.path), cfg.sample_rate), cfg) for s in find_audio([clips])])
    assert manifest["audio"]["recordings"] == 18
    assert manifest["audio"]["mean"] == pytest.approx(frames.double().mean().item(), rel=1e-5)
    assert manifest["audio"]["std"] == pytest.approx(frames.double().std(unbiased=False).item(), rel=1e-4)
    assert (tiny_run / "cache" / "fbank.bin").stat().st_size == frames.numel() * 4   # every frame decoded once
    config = json.loads((tiny_run / "encoder" / "config.json").read_text())
    assert config["extra"]["mean"] == manifest["audio"]["mean"]
    assert config["extra"]["features"]["sample_rate"] == cfg.sample_rate
    for picture in ("loss.png", "spectrogram.png"):
        assert (tiny_run / "plots" / picture).stat().st_size > 10_000


@pytest.mark.parametrize("method", ["ssamba", "tera-inv"])
def test_resume_lands_on_the_same_weights_and_reuses_the_cache(clips: Path, tmp_path: Path, method: str) -> None:
    """SIGTERM at the first checkpoint (as a preempted job), then --resume: the weights of an uninterrupted run."""
    from tests.helpers import sigterm_at_first_checkpoint

    full, part = tmp_path / "full", tmp_path / "part"
    steps = ["--set", "train.steps=6", "--set", "train.checkpoint_every=2", "--set", f"method={method}"]
    assert invoke("pretrain", clips, *RECIPE, *steps, "--out", full).exit_code == 0
    cmd = [sys.executable, "-m", "sslkit", "audio", "pretrain", str(clips), *RECIPE, *steps, "--out", str(part)]
    code, err, step = sigterm_at_first_checkpoint(cmd, part, {**os.environ, "OMP_NUM_THREADS": "1"})
    assert code == 130 and 2 <= step < 6, err[-1500:]
    res = invoke("pretrain", clips, "--out", part, "--resume")
    assert res.exit_code == 0, res.output
    assert "cache reused" in res.output
    a, b = _weights(full), _weights(part)
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssamba", "tera-inv"])
def test_two_processes_equal_one(clips: Path, tmp_path: Path, method: str) -> None:
    """--devices 2 (gloo on CPU): the same global batches and per-clip masks, and DDP averages the gradients of
    per-clip mean losses, so the weights equal one process's (the logged loss is rank 0's half of the batch);
    tera-inv's VICReg sees the views of the whole global batch (gathered over ranks)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "sslkit", "audio", "pretrain", str(clips), *RECIPE, "--set", "train.steps=4",
            "--set", f"method={method}"]
    one = subprocess.run([*base, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*base, "--devices", "2", "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]                      # rank 0 alone logged
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=k)


def test_embed_clip_and_segment_rows_keep_ids_as_given(tiny_run: Path, clips: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from sslkit.core.embeddings import read_embeddings

    monkeypatch.chdir(clips)
    (clips / "list.tsv").unlink(missing_ok=True)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,note\n" + f"{clips / 'tone_0.wav'},x\n")
    res = invoke("embed", tiny_run, "chirp_4.ogg", "sub", manifest, "--out", tmp_path / "clips.parquet")
    assert res.exit_code == 0, res.output
    ids, z = read_embeddings(tmp_path / "clips.parquet")
    sub = sorted(str(Path("sub") / p.name) for p in (clips / "sub").iterdir())
    assert ids == ["chirp_4.ogg", *sub, str(clips / "tone_0.wav")]
    assert z.shape[0] == len(ids) and np.isfinite(z).all() and z.std(0).max() > 0
    res = invoke("embed", tiny_run, "tone_0.wav", "noise_2.flac", "--out", tmp_path / "seg.parquet", "--level", "segment",
                 "--segment", "0.2", "--hop", "0.1")
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "seg.parquet").to_pandas()
    # tone_0 is 0.5 s at 8 kHz -> 48 frames: segments of 20 frames every 10 start at 0,10,20 and 28 (the tail)
    tone = table[table["id"] == "tone_0.wav"]
    assert tone["start"].tolist() == [0.0, 0.1, 0.2, 0.28] and tone["end"].tolist() == [0.2, 0.3, 0.4, 0.48]
    assert set(table["id"]) == {"tone_0.wav", "noise_2.flac"}


def test_export_and_load_encoder_take_waveforms_and_fbank(tiny_run: Path, clips: Path, tmp_path: Path) -> None:
    import sslkit
    from sslkit.domains.audio.features import AudioData, compute_fbank, normalise
    from sslkit.domains.audio.io import read_wave, to_rate

    res = invoke("export", tiny_run, "--out", tmp_path / "enc")
    assert res.exit_code == 0, res.output
    enc = sslkit.load_encoder(tmp_path / "enc")
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    cfg = AudioData(**config["extra"]["features"])
    wave = to_rate(*read_wave(clips / "chirp_4.ogg"), cfg.sample_rate)
    fbank = compute_fbank(wave, cfg)
    with torch.no_grad():
        from_wave, from_fbank = enc(wave.unsqueeze(0)), enc(fbank.unsqueeze(0))
        direct = enc.embed_fbank(normalise(fbank, config["extra"]["mean"], config["extra"]["std"]).unsqueeze(0), None)
        run_enc = sslkit.load_encoder(tiny_run)(fbank.unsqueeze(0))
    assert from_wave.ndim == 2 and from_wave.shape[0] == 1
    torch.testing.assert_close(from_wave, from_fbank, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_fbank, direct)
    torch.testing.assert_close(from_fbank, run_enc)


def test_evaluate_prints_the_table_with_baselines_and_writes_json(tiny_run: Path, clips: Path) -> None:
    labels = clips.parent / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p.relative_to(clips.parent)},{p.name.split('_')[0]}\n"
                                                for p in sorted(clips.rglob("*_*.*"))))
    res = invoke("evaluate", tiny_run, clips, "--labels", labels, "--seeds", "2", "--k", "3")
    assert res.exit_code == 0, res.output
    report = json.loads((tiny_run / "evaluation.json").read_text())
    method = report["method"]
    assert list(report["results"]) == [f"{method} embeddings", "MFCC statistics", f"{method}, random weights"]
    mfcc = report["results"]["MFCC statistics"]["linear"][0]
    assert mfcc >= 0.75          # tones, chirps and noise differ plainly in their cepstra
    assert report["probe_c"] == "auto" and all(len(r["C"]) == 2 for r in report["results"].values())
    assert "MFCC statistics" in res.output and "random weights" in res.output
    assert (tiny_run / "plots" / "embeddings.png").stat().st_size > 10_000
    # groups: odd-numbered files (sub/) versus the others -> leave-one-group-out over 2 groups
    res = invoke("evaluate", tiny_run, clips, "--label-pattern", r"^([a-z]+)_", "--group-pattern", r"_(\d*[13579])\.",
                 "--json", "--no-baselines")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["split"].startswith("leave-one-group-out over 9 groups") and out["clips"] == 9


def test_skipped_files_are_counted_and_said(bad: Path, tmp_path: Path) -> None:
    res = invoke("pretrain", bad, *RECIPE, "--set", "train.steps=1", "--set", "train.batch_size=2", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "skipped 4 of 9 file(s) that could not be read as audio" in text
    assert "1 clip(s) are silent" in text and "2 clip(s) are shorter than one patch" in text
    audio = json.loads((tmp_path / "r" / "manifest.json").read_text())["audio"]
    assert sorted(Path(s["id"]).name for s in audio["skipped"]) == ["corrupt.wav", "empty.flac", "notes.ogg", "song.m4a"]
    assert audio["recordings"] == 5


@pytest.mark.parametrize("args,pattern", [
    (["pretrain", "{bad}", "--strict"], "corrupt.wav: not readable as audio"),
    (["pretrain", "{bad}/song.m4a"], "AAC/M4A is not read by soundfile"),
    (["pretrain", "{bad}/empty.flac", "{bad}/notes.ogg"], "none of the 2 file(s) could be read as audio"),
    (["pretrain", "{bad}/nope.wav"], "does not exist"),
    (["pretrain", "{bad}/../nolist.csv"], "no 'path' column"),
    (["evaluate", "{run}", "{clips}", "--labels", "{bad}/../cols.csv"], "needs 'path' and 'label' columns"),
    (["evaluate", "{run}", "{clips}", "--labels", "{bad}/../missing.csv"], "names 1 file(s) that do not exist (first: "),
    (["evaluate", "{run}", "{clips}", "--label-pattern", "^zzz_(x)"], "matches none of the 18 file names"),
    (["evaluate", "{run}", "{clips}", "--label-pattern", "(["], "not a valid regular expression"),
    (["evaluate", "{run}", "{clips}"], "give the labels either as --labels"),
    (["evaluate", "{run}", "{clips}", "--label-pattern", "^([a-z]+)_", "--probe-c", "0"], "--probe-c '0' is not"),
    (["embed", "{run}", "{clips}", "--level", "frame", "--out", "{tmp}/x.parquet"], "choose clip or segment"),
])
def test_bad_input_is_one_line_exit_2(bad: Path, clips: Path, tiny_run: Path, tmp_path: Path, args: list[str],
                                      pattern: str) -> None:
    (bad.parent / "nolist.csv").write_text("file,label\na.wav,1\n")
    (bad.parent / "cols.csv").write_text("file,label\na.wav,1\n")
    (bad.parent / "missing.csv").write_text(f"path,label\n{clips / 'tone_0.wav'},a\n{clips / 'gone.wav'},b\n")
    out = tmp_path / "run"
    args = [a.format(bad=bad, clips=clips, run=tiny_run, tmp=tmp_path) for a in args]
    extra = [*RECIPE, "--out", str(out)] if args[0] == "pretrain" else []
    res = invoke(*args, *extra)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and pattern in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not out.exists()          # refused: no run folder left behind


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/system-deps.sh)")
def test_sample_data_gives_labelled_voices_that_evaluate_reads(tmp_path: Path, tiny_run: Path) -> None:
    out = tmp_path / "kw"
    res = invoke("sample-data", out, "--voices", "3", "--takes", "1")
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.wav"))
    assert len(files) == 30 and (out / "labels.csv").is_file()
    from sslkit.domains.audio.samples import GROUP_PATTERN, LABEL_PATTERN
    import re

    assert {re.match(LABEL_PATTERN, f.name).group(1) for f in files} == {"yes", "no", "up", "down", "left", "right",
                                                                          "on", "off", "stop", "go"}
    assert len({re.match(GROUP_PATTERN, f.name).group(1) for f in files}) == 3
    res = invoke("evaluate", tiny_run, out, "--labels", out / "labels.csv", "--group-pattern", GROUP_PATTERN,
                 "--no-baselines", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["clips"] == 30
    assert invoke("sample-data", out).exit_code == 2      # exists: refused without --overwrite


def test_sample_data_without_espeak_names_the_deps_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    res = invoke("sample-data", tmp_path / "kw")
    assert res.exit_code == 2 and "scripts/system-deps.sh" in res.output and not (tmp_path / "kw").exists()
