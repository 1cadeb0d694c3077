"""`sslkit audio sample-data DIR`: a small labelled spoken-keyword set made offline with espeak-ng.

Ten keywords (Speech Commands' yes/no/up/down/left/right/on/off/stop/go) spoken by many synthetic voices (English
accents × espeak-ng voice variants), each take at its own speed and pitch, with a random gain and a faint noise
floor. File names carry the label and the voice — `{word}_{voice}_{take}.wav` — so

    --label-pattern '^([a-z]+)_'   --group-pattern '^[a-z]+_([a-z0-9-]+)_'

give the keyword and the voice (leave-one-voice-out); `labels.csv` (path,label,voice) holds the same.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = {"en-us": "us", "en-gb": "gb", "en-gb-scotland": "scot", "en-gb-x-rp": "rp", "en-029": "carib",
           "en-gb-x-gbclan": "lanc"}   # espeak-ng accent -> short name used in file names
VARIANTS = ("m1", "m3", "f1", "f2", "m7", "f4")
LABEL_PATTERN = r"^([a-z]+)_"
GROUP_PATTERN = r"^[a-z]+_([a-z0-9-]+)_"


def voices(n: int) -> list[tuple[str, str]]:
    """n (espeak-ng voice 'accent+variant', file-name form 'us-m1'), accents and variants interleaved so a few voices
    already differ in both."""
    accents = list(ACCENTS)
    combos = []
    for i in range(len(accents) * len(VARIANTS)):
        accent, variant = accents[i % len(accents)], VARIANTS[(i + i // len(accents)) % len(VARIANTS)]
        combos.append((f"{accent}+{variant}", f"{ACCENTS[accent]}-{variant}"))
    return combos[:n]


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("espeak-ng is not installed, so no spoken sample data can be made — install it with "
                        "scripts/system-deps.sh (Debian/Ubuntu: apt-get install espeak-ng), or point the commands "
                        "at your own recordings")
    return exe


def speak(exe: str, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV on stdout -> (samples,) float32, rate."""
    import soundfile as sf

    out = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, timeout=60)
    if out.returncode != 0 or not out.stdout:
        raise UserError(f"espeak-ng failed for voice {voice} ({out.stderr.decode(errors='replace').strip()[:120]}) — "
                        "check the espeak-ng installation (scripts/system-deps.sh)")
    data, rate = sf.read(io.BytesIO(out.stdout), dtype="float32")
    return (data if data.ndim == 1 else data.mean(1)), int(rate)


def write_samples(out: Path, *, n_voices: int = 12, takes: int = 3, words: tuple[str, ...] = WORDS, seed: int = 0,
                  overwrite: bool = False) -> list[Path]:
    """Write `{word}_{voice}_{take}.wav` for every word × voice × take into `out`, plus labels.csv; the paths."""
    import soundfile as sf

    from sslkit.core.files import check_dir_out, staged_dir

    exe = espeak()
    out = check_dir_out(Path(out), overwrite)
    rng = np.random.default_rng(seed)
    rows = []
    with staged_dir(out) as tmp:
        for voice, name in voices(n_voices):
            for word in words:
                for take in range(takes):
                    wave, rate = speak(exe, word, voice, int(rng.integers(120, 221)), int(rng.integers(20, 81)))
                    wave = wave * rng.uniform(0.3, 1.0) + rng.normal(0, 10 ** (-55 / 20), wave.shape).astype(np.float32)
                    pad = np.zeros(int(rng.integers(0, rate // 10)), np.float32)      # a little leading silence
                    path = tmp / f"{word}_{name}_{take}.wav"
                    sf.write(str(path), np.concatenate([pad, wave]).clip(-1, 1), rate, subtype="PCM_16")
                    rows.append((path.name, word, name))
        with open(tmp / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "voice"])
            w.writerows(rows)
    return [out / r[0] for r in rows]
