"""Units of the audio data path: fbank, resampling, downmix, bad files, file finding, windows, labels, probes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit.core.errors import UserError
from sslkit.domains.audio.data import Windows, build_cache, clip_windows, window_starts
from sslkit.domains.audio.features import AudioData, compute_fbank, normalise
from sslkit.domains.audio.io import AudioReadError, Source, find_audio, read_wave, to_rate


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def _mel_bin(freq: float, cfg: AudioData) -> int:
    """Mel bin whose centre is nearest `freq` (Kaldi's mel scale, bins spread evenly from 20 Hz to Nyquist)."""
    mel = lambda f: 1127.0 * np.log(1 + f / 700.0)  # noqa: E731
    centres = np.linspace(mel(20.0), mel(cfg.sample_rate / 2), cfg.n_mels + 2)[1:-1]
    return int(np.argmin(np.abs(centres - mel(freq))))


def test_fbank_shape_and_the_peak_sits_at_the_tone() -> None:
    cfg = AudioData(n_mels=64)
    fb = compute_fbank(torch.from_numpy(_tone(1000, 16000)), cfg)
    assert fb.shape == (1 + (16000 - 400) // 160, 64)           # 25 ms windows every 10 ms, Kaldi's snip_edges
    assert abs(int(fb.mean(0).argmax()) - _mel_bin(1000, cfg)) <= 1
    assert compute_fbank(torch.zeros(50), cfg).shape == (1, 64)     # shorter than one window: one padded frame


def test_resampled_8k_tone_matches_the_same_tone_at_16k() -> None:
    cfg = AudioData(n_mels=64)
    low = compute_fbank(to_rate(_tone(700, 8000), 8000, 16000), cfg)
    high = compute_fbank(torch.from_numpy(_tone(700, 16000)), cfg)
    assert low.shape == high.shape
    band = slice(0, _mel_bin(3500, cfg))                          # below the 8 kHz file's Nyquist
    assert (low[5:-5, band] - high[5:-5, band]).abs().mean() < 0.5
    assert int(low.mean(0).argmax()) == int(high.mean(0).argmax())


def test_level_normalisation_sets_the_rms() -> None:
    from sslkit.domains.audio.features import level_normalise

    x = level_normalise(torch.from_numpy(_tone(440, 16000)) * 0.01, -25.0)
    assert 20 * np.log10(float(x.pow(2).mean().sqrt())) == pytest.approx(-25.0, abs=1e-3)


def test_normalise_is_ssast_convention() -> None:
    assert normalise(torch.tensor([3.0]), 1.0, 0.5).item() == pytest.approx(2.0)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    import soundfile as sf

    left, right = _tone(300, 16000), _tone(500, 16000) * 0.5
    sf.write(str(tmp_path / "s.flac"), np.stack([left, right], 1), 16000, subtype="PCM_24")
    wave, rate = read_wave(tmp_path / "s.flac")
    assert rate == 16000 and wave.shape == left.shape
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-5)


def test_bad_files_raise_a_reason(bad: Path) -> None:
    reasons = {}
    for name in ("corrupt.wav", "empty.flac", "notes.ogg", "song.m4a"):
        with pytest.raises(AudioReadError) as exc:
            read_wave(bad / name)
        reasons[name] = str(exc.value)
    assert reasons["empty.flac"] == "zero-length file"
    assert "not readable as audio" in reasons["corrupt.wav"] and "not readable as audio" in reasons["notes.ogg"]
    assert "ffmpeg" in reasons["song.m4a"]


def test_find_audio_folders_files_and_manifests(clips: Path, tmp_path: Path) -> None:
    found = find_audio([clips])
    assert len(found) == 18 and [s.path for s in found] == sorted(s.path for s in found)
    assert all(s.id == str(clips / s.path.relative_to(clips)) for s in found)
    (tmp_path / "m.tsv").write_text("label\tpath\nx\t" + str(clips / "tone_0.wav") + "\ny\t../" + tmp_path.name + "/a.wav\n")
    (tmp_path / "a.wav").write_bytes(b"")
    got = find_audio([tmp_path / "m.tsv", clips / "tone_0.wav"])    # the same file twice counts once
    assert [s.id for s in got] == [str(clips / "tone_0.wav"), f"../{tmp_path.name}/a.wav"]
    assert got[1].path.resolve() == (tmp_path / "a.wav").resolve()
    (tmp_path / "m2.csv").write_text("path\nnot_here.wav\n")
    with pytest.raises(UserError, match="names 1 file"):
        find_audio([tmp_path / "m2.csv"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="holds no audio files"):
        find_audio([tmp_path / "empty"])


@pytest.mark.parametrize("n,length,hop,starts", [
    (50, 64, 64, [0]), (64, 64, 32, [0]), (100, 64, 64, [0, 36]), (130, 64, 32, [0, 32, 64, 66]), (128, 64, 64, [0, 64]),
])
def test_window_starts_cover_the_clip(n: int, length: int, hop: int, starts: list[int]) -> None:
    assert window_starts(n, length, hop) == starts


def test_windows_are_normalised_padded_and_masked(clips: Path, tmp_path: Path) -> None:
    cfg = AudioData(n_mels=32, clip_frames=64, hop_frames=32)
    sources = find_audio([clips / "tone_0.wav", clips / "sub" / "chirp_7.wav"])
    index = build_cache(sources, cfg, tmp_path / "cache", strict=False, min_frames=16)
    raw = [compute_fbank(to_rate(*read_wave(s.path), 16000), cfg) for s in sources]
    assert index["lengths"] == [len(r) for r in raw]
    ds = Windows(tmp_path / "cache", index, cfg, 1.5, 2.0)
    item = ds[0]                                                     # tone_0: 48 frames -> one padded window
    assert item["fbank"].shape == (64, 32) and int(item["valid"].sum()) == 48
    torch.testing.assert_close(item["fbank"][:48], normalise(raw[0], 1.5, 2.0))
    assert item["fbank"][48:].abs().sum() == 0
    assert len(ds) == 1 + len(window_starts(len(raw[1]), 64, 32))
    torch.manual_seed(3)
    s1 = ds[1]["seed"]
    torch.manual_seed(3)
    assert ds[1]["seed"] == s1                                       # the seed follows the item's RNG state
    uncached = Windows(tmp_path / "cache", {**index, "cached": False}, cfg, 1.5, 2.0)
    torch.testing.assert_close(uncached[2]["fbank"], ds[2]["fbank"])  # decoding again gives the cached frames


def test_clip_windows_stack_with_masks() -> None:
    x, v, st = clip_windows(torch.ones(100, 8), 40, 30)
    assert x.shape == (3, 40, 8) and st == [0, 30, 60] and v.all()      # the last window ends at frame 100
    x, v, st = clip_windows(torch.ones(10, 8), 40)
    assert x.shape == (1, 40, 8) and int(v.sum()) == 10 and x[0, 10:].abs().sum() == 0


def test_labels_from_csv_match_by_path_or_name(clips: Path, tmp_path: Path) -> None:
    from sslkit.domains.audio.evaluation import from_pattern, labels_from_csv

    sources = find_audio([clips])
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\n" + f"{clips / 'tone_0.wav'},a\nchirp_4.ogg,b\n")
    labels = labels_from_csv(csv, sources)
    named = {s.path.name: lab for s, lab in zip(sources, labels) if lab}
    assert named == {"tone_0.wav": "a", "chirp_4.ogg": "b"}
    assert from_pattern(r"^([a-z]+)_", sources, "--label-pattern")[0] == sources[0].path.name.split("_")[0]
    sub = find_audio([clips / "sub"])                 # labels for the whole corpus, a subset evaluated: rows ignored
    csv.write_text("path,label\n" + f"{clips / 'tone_0.wav'},a\n{clips / 'sub' / 'chirp_1.wav'},b\n")
    assert labels_from_csv(csv, sub) == ["b"] + [None] * (len(sub) - 1)


def test_leave_one_group_out_holds_whole_groups_out() -> None:
    from sslkit.domains.audio.evaluation import group_scores

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    groups = np.tile(np.repeat(["a", "b", "c"], 10), 2)
    x = rng.normal(size=(60, 4))
    x[:, 0] += 4 * y                                                   # class signal shared by every group
    x[:, 1] += 50 * (groups == "c")                                    # group c sits far away
    res = group_scores(x, y, groups, k=5)
    assert set(res["per_group"]) == {"a", "b", "c"}
    assert res["per_group"]["a"]["linear"] == 1.0 and res["linear"][0] > 0.6


def test_probe_c_auto_is_chosen_inside_the_training_groups_and_regularises_when_it_helps() -> None:
    from sslkit.core.evaluation import PROBE_C_GRID, inner_folds
    from sslkit.domains.audio.evaluation import group_scores

    rng = np.random.default_rng(0)
    groups = np.repeat(list("abcdef"), 20)
    y = np.tile(np.repeat([0, 1], 10), 6)
    x = rng.normal(size=(120, 300))                       # 290 noise features, 10 weak shared signals
    x[:, :10] += 0.8 * y[:, None]
    x[:, 10:50] += 2.0 * rng.normal(size=(6, 40))[np.searchsorted(list("abcdef"), groups)]   # a voice's offsets
    for tr, va in inner_folds(y, groups, 0):            # the inner split never cuts a group in two
        assert not set(groups[tr]) & set(groups[va])
    fixed = group_scores(x, y, groups, k=5, c=1.0)
    auto = group_scores(x, y, groups, k=5, c=None)
    assert fixed["C"] == [1.0] * 6 and len(auto["C"]) == 6 and set(auto["C"]) <= set(PROBE_C_GRID)
    assert min(auto["C"]) < 1.0                           # the inner split prefers a stronger penalty here ...
    assert auto["linear"][0] > fixed["linear"][0]         # ... and it generalises better to the held-out voices


def test_probe_c_option_is_auto_or_a_positive_number() -> None:
    from sslkit.core.errors import UserError
    from sslkit.domains.audio.evaluation import parse_probe_c

    assert parse_probe_c("auto") is None and parse_probe_c("0.01") == 0.01
    for bad in ("0", "-1", "nan", "inf", "strong"):
        with pytest.raises(UserError, match="--probe-c"):
            parse_probe_c(bad)


def test_mfcc_statistics_have_fixed_length_and_tell_tone_from_noise() -> None:
    from sslkit.domains.audio.evaluation import N_MFCC, mfcc_stats

    cfg = AudioData(n_mels=64)
    rng = np.random.default_rng(0)
    tone = compute_fbank(torch.from_numpy(_tone(500, 16000)), cfg)
    noise = compute_fbank(torch.from_numpy(0.2 * rng.standard_normal(8000).astype(np.float32)), cfg)
    m = mfcc_stats([tone, noise])
    assert m.shape == (2, 4 * N_MFCC) and np.isfinite(m).all()
    assert np.abs(m[0] - m[1]).max() > 1.0


def test_mp3_is_read_where_libsndfile_has_it(tmp_path: Path) -> None:
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no MP3")
    sf.write(str(tmp_path / "t.mp3"), _tone(440, 16000), 16000, format="MP3")
    wave, rate = read_wave(tmp_path / "t.mp3")
    cfg = AudioData(n_mels=64)
    fb = compute_fbank(to_rate(wave, rate, 16000), cfg)
    assert rate == 16000 and abs(int(fb.mean(0).argmax()) - _mel_bin(440, cfg)) <= 1
