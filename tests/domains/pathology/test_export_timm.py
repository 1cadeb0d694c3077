"""export: the sslkit format round trip, and the timm format loading with timm.create_model + load_state_dict into
an encoder that gives the same features as sslkit.load_encoder (as hub pathology encoders are loaded)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import sslkit
from tests.domains.pathology.conftest import run_cli
from tests.domains.pathology.test_evaluate_mil import tiny_run  # noqa: F401 - the shared session fixture


def test_sslkit_export_round_trip(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    res = run_cli("export", tiny_run, "--out", tmp_path / "enc")
    assert res.returncode == 0, res.stderr
    enc, ref = sslkit.load_encoder(tmp_path / "enc"), sslkit.load_encoder(tiny_run)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(enc(enc.preprocess(x)), ref(ref.preprocess(x)))
    assert enc.sslkit_config["extra"]["tile_px"] == 32


def test_dino_runs_embed_and_export_the_ema_teacher_not_the_student(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """DINO's authors evaluate the EMA teacher; RUN/encoder (what embed/evaluate/mil read) and `export` hold it."""
    from sslkit.core.checkpoint import load_checkpoint

    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["model"]
    teacher = {k[len("teacher.encoder."):]: v for k, v in state.items() if k.startswith("teacher.encoder.")}
    student = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)     # after 6 steps the two differ
    res = run_cli("export", tiny_run, "--out", tmp_path / "enc")
    assert res.returncode == 0, res.stderr
    for enc in (sslkit.load_encoder(tiny_run), sslkit.load_encoder(tmp_path / "enc")):
        weights = enc.state_dict()
        for k, v in teacher.items():
            torch.testing.assert_close(weights[k], v, rtol=0, atol=0, msg=k)
        assert enc.sslkit_config["extra"]["weights"] == "teacher"


def test_timm_export_loads_in_timm_and_gives_the_same_features(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import timm
    from safetensors.torch import load_file

    out = tmp_path / "timm"
    res = run_cli("export", tiny_run, "--out", out, "--format", "timm")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["num_classes"] == 0 and cfg["num_features"] == 64
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["interpolation"] == "bicubic"
    assert pc["mean"] == [0.485, 0.456, 0.406] and pc["std"] == [0.229, 0.224, 0.225]
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"])
    missing, unexpected = model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert not missing and not unexpected
    model.eval()
    ref = sslkit.load_encoder(tiny_run)
    tiles = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    # timm's own preprocessing from pretrained_cfg: /255, then (x - mean) / std
    x = (tiles.float() / 255 - torch.tensor(pc["mean"]).view(1, 3, 1, 1)) / torch.tensor(pc["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(ref.preprocess(tiles)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), timm.create_model(cfg["architecture"], num_classes=0,
                                                              **cfg["model_args"]).eval()(x))   # trained weights


def test_export_refuses_an_unknown_format_and_an_existing_folder(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    res = run_cli("export", tiny_run, "--out", tmp_path / "x", "--format", "onnx")
    assert res.returncode == 2 and "--format 'onnx'" in res.stderr and not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = run_cli("export", tiny_run, "--out", tmp_path / "full", "--format", "timm")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
