"""Generated audio for the audio tests: tones, chirps and noise at several rates, channels and formats (soundfile),
a folder of bad files, and one tiny pretraining run shared by the tests that only read it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

KINDS = ("tone", "chirp", "noise")
RATES = (8000, 16000, 44100)
FORMATS = ("wav", "flac", "ogg")


def synth(kind: str, seconds: float, rate: int, rng: np.random.Generator, i: int = 0) -> np.ndarray:
    """A tone, a rising chirp or white noise, float32 in [-1, 1]."""
    t = np.arange(int(rate * seconds)) / rate
    if kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * (300 + 150 * (i % 5)) * t)
    elif kind == "chirp":
        x = 0.5 * np.sin(2 * np.pi * (150 + 1500 * t) * t)
    else:
        x = 0.2 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def write_clips(out: Path, n: int = 18) -> list[Path]:
    """`{kind}_{i}.{ext}` (odd i in sub/): 3 kinds × rates 8/16/44.1 kHz × wav/flac/ogg, some stereo, 0.5–1.25 s."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    (out / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        kind, rate, ext = KINDS[i % 3], RATES[(i // 3) % 3], FORMATS[(i // 2) % 3]
        x = synth(kind, 0.5 + 0.25 * (i % 4), rate, rng, i)
        if i % 4 == 1:
            x = np.stack([x, 0.5 * x], 1)
        path = out / ("sub" if i % 2 else "") / f"{kind}_{i}.{ext}"
        sf.write(str(path), x, rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audio") / "clips"
    write_clips(out)
    return out


@pytest.fixture(scope="session")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good clips plus a corrupt, an empty, a text and an M4A file, a silent clip and two very short ones."""
    import soundfile as sf

    out = tmp_path_factory.mktemp("audio") / "bad"
    out.mkdir()
    rng = np.random.default_rng(1)
    sf.write(str(out / "good_tone.wav"), synth("tone", 1.0, 16000, rng), 16000)
    sf.write(str(out / "good_noise.flac"), synth("noise", 1.0, 22050, rng), 22050)
    (out / "corrupt.wav").write_bytes(b"RIFF" + rng.bytes(3000))
    (out / "empty.flac").write_bytes(b"")
    (out / "notes.ogg").write_text("not audio at all\n")
    (out / "song.m4a").write_bytes(rng.bytes(100))
    sf.write(str(out / "silence.wav"), np.zeros(16000, np.float32), 16000)
    sf.write(str(out / "short.wav"), synth("noise", 0.05, 16000, rng), 16000)
    sf.write(str(out / "blip.wav"), synth("noise", 0.005, 16000, rng), 16000)
    return out


RECIPE = ["--recipe", "tiny", "--set", "train.device=cpu", "--set", "train.precision=fp32", "--set", "train.batch_size=4",
          "--set", "train.log_every=1"]


@pytest.fixture(scope="session")
def tiny_run(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.domains.audio.test_cli import invoke

    out = tmp_path_factory.mktemp("audio-run") / "run"
    res = invoke("pretrain", clips, *RECIPE, "--set", "train.steps=4", "--out", out)
    assert res.exit_code == 0, res.output
    return out
