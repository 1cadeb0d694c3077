"""The tile readout levers (--token, --tta, --stain-norm): each changes the vectors the way it claims, the defaults
change nothing, the choice is recorded, and bad values are one line with exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.domains.pathology.conftest import he_texture, run_cli

WIDTH = 32


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """An exported 1-block ViT (width 32) on 32-px tiles with pool cls+mean, random weights."""
    import torch

    from sslkit.core.export import encoder_spec, export_encoder
    from sslkit.domains.pathology.model import ViTEncoder

    torch.manual_seed(0)
    kwargs = dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2,
                  pool="cls+mean")
    out = tmp_path_factory.mktemp("enc") / "encoder"
    export_encoder(ViTEncoder(**kwargs), encoder_spec("pathology", "vit", **kwargs), out, extra={"tile_px": 32})
    return out


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path):  # noqa: ANN201
    from sslkit.core.export import load_encoder

    return load_encoder(encoder_dir).eval()


def _tiles(n: int, seed: int = 0):  # noqa: ANN202
    import torch

    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([he_texture(rng, 32, 32).transpose(2, 0, 1) for _ in range(n)]))


def test_defaults_are_the_encoders_own_vectors_and_tokens_have_their_widths(encoder) -> None:  # noqa: ANN001
    from sslkit.domains.pathology.model import embed_batch
    from sslkit.domains.pathology.readout import Readout, TileReader

    tiles = _tiles(3)
    want = embed_batch(encoder, tiles).numpy()
    assert want.shape == (3, 2 * WIDTH)                                   # the encoder's pool: cls+mean
    np.testing.assert_array_equal(TileReader(Readout())(encoder, tiles).numpy(), want)
    cls = TileReader(Readout("cls"))(encoder, tiles).numpy()
    mean = TileReader(Readout("mean"))(encoder, tiles).numpy()
    assert cls.shape == mean.shape == (3, WIDTH)                          # token=cls: the model width
    np.testing.assert_allclose(cls, want[:, :WIDTH], atol=1e-5)           # cls+mean is [cls, mean]
    np.testing.assert_allclose(mean, want[:, WIDTH:], atol=1e-5)


def test_tta8_is_invariant_to_rotating_and_flipping_the_tile(encoder) -> None:  # noqa: ANN001
    import torch

    from sslkit.domains.pathology.readout import Readout, TileReader

    tiles = _tiles(2, seed=1)
    turned = torch.rot90(tiles, 1, (2, 3)).contiguous()
    flipped = tiles.flip(3).contiguous()
    one = TileReader(Readout("cls", tta=1))
    eight = TileReader(Readout("cls", tta=8))
    a, b, c = (eight(encoder, t).numpy() for t in (tiles, turned, flipped))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)
    # without TTA the same rotation moves the vector (so the check above is not trivially true)
    assert np.abs(one(encoder, tiles).numpy() - one(encoder, turned).numpy()).max() > 1e-3


def test_reinhard_brings_colour_shifted_copies_of_an_image_together(encoder) -> None:  # noqa: ANN001
    import torch

    from sslkit.domains.pathology.readout import Readout, TileReader

    base = _tiles(4, seed=2)
    # a second "slide" of the same tiles, stained differently: bluer, darker haematoxylin-ish cast
    shifted = torch.from_numpy(np.clip(base.numpy().astype(np.float32) * np.array([0.75, 0.9, 1.1])[None, :, None, None]
                                       - 10, 0, 255).astype(np.uint8))
    tiles = torch.cat([base, shifted])
    images = ["a"] * 4 + ["b"] * 4

    def gap(stain: str) -> float:
        reader = TileReader(Readout("cls", stain_norm=stain))
        reader.prepare([tiles[:3], tiles[3:]], images)          # batches in row order, as embed reads them
        z = torch.cat([reader(encoder, tiles[:5]), reader(encoder, tiles[5:])]).numpy()
        return float(np.linalg.norm(z[:4] - z[4:], axis=1).mean())

    raw, normed = gap("none"), gap("reinhard")
    assert normed < 0.5 * raw, (raw, normed)


def test_embed_cli_applies_and_records_the_readout(tile_folder: Path, encoder_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from sslkit.core.embeddings import read_embeddings

    out = tmp_path / "e.parquet"
    res = run_cli("embed", encoder_dir, tile_folder, "--out", out, "--workers", 0, "--device", "cpu",
                  "--token", "cls", "--tta", "8", "--stain-norm", "reinhard")
    assert res.returncode == 0, res.stderr
    ids, vectors = read_embeddings(out)
    assert vectors.shape == (24, WIDTH) and np.isfinite(vectors).all()
    meta = json.loads(pq.read_schema(out).metadata[b"sslkit.metadata"])
    assert meta["readout"] == {"token": "cls", "tta": 8, "stain_norm": "reinhard"}
    default = tmp_path / "d.parquet"
    assert run_cli("embed", encoder_dir, tile_folder, "--out", default, "--workers", 0,
                   "--device", "cpu").returncode == 0
    meta = json.loads(pq.read_schema(default).metadata[b"sslkit.metadata"])
    assert meta["readout"] == {"token": "cls+mean", "tta": 1, "stain_norm": "none"}   # the encoder's pool
    assert read_embeddings(default)[1].shape == (24, 2 * WIDTH)


@pytest.mark.parametrize("command", ["embed", "evaluate", "mil"])
@pytest.mark.parametrize("option", [("--token", "patch"), ("--tta", "4"), ("--stain-norm", "macenko")])
def test_bad_readout_values_are_one_line_exit_2(command: str, option: tuple[str, str], tile_folder: Path,
                                                encoder_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    extra = {"embed": ["--out", out], "evaluate": ["--labels", tile_folder], "mil": ["--labels", tmp_path / "l.csv"]}
    res = run_cli(command, encoder_dir, tile_folder, *extra[command], *option)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and option[0] in lines[0], res.stderr
    assert not out.exists()


def test_encode_all_reads_both_encoders_with_the_readout(tile_folder: Path, encoder_dir: Path) -> None:
    """evaluate/mil embed through encode_all: the readout reaches the encoder and its random twin alike."""
    from sslkit.domains.pathology.data import resolve_inputs
    from sslkit.domains.pathology.evaluate import encode_all
    from sslkit.domains.pathology.readout import Readout

    rows = resolve_inputs([tile_folder], tile_px=32, mpp=None, tile_um=None, min_tissue=0.0, slide_mpp=None).head(6)
    feats, _ = encode_all(encoder_dir, rows, 4, "cpu", Readout("mean", tta=8))
    assert feats["ssl"].shape == feats["random weights"].shape == (6, WIDTH)
    base, _ = encode_all(encoder_dir, rows, 4, "cpu")
    assert base["ssl"].shape == (6, 2 * WIDTH)
    assert not np.allclose(feats["ssl"], base["ssl"][:, WIDTH:], atol=1e-4)    # TTA changed the mean token
