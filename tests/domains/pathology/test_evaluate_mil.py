"""evaluate and mil end to end on generated labelled tiles and slides: the tables, JSON and plots, grouped splits,
a planted slide-level signal that MIL must find, and the bad-input refusals (one line, exit 2, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.domains.pathology.conftest import run_cli


@pytest.fixture(scope="session")
def tiny_run(tile_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pretrain -r tiny` on the generated tile folder (24 tiles of 64 px, two classes)."""
    out = tmp_path_factory.mktemp("pathology-runs") / "tiny"
    res = run_cli("pretrain", tile_folder, "-r", "tiny", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def planted_slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """16 PNG 'slides' of 3x3 stroma tiles (32 px); odd ones hold one nuclei tile (the planted signal). labels.csv
    names them with a fold column (4 folds)."""
    from PIL import Image

    from sslkit.domains.pathology.samples import _texture

    folder = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    lines = ["slide,label,fold"]
    paths = []
    for i in range(16):
        img = np.concatenate([np.concatenate([_texture(rng, "stroma", 32) for _ in range(3)], 1) for _ in range(3)], 0)
        if i % 2:
            r, c = rng.integers(0, 3, 2)
            img[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = _texture(rng, "nuclei", 32)
        paths.append(folder / f"s{i:02d}.png")
        Image.fromarray(img).save(paths[-1])
        lines.append(f"{paths[-1].name},{'tumour' if i % 2 else 'normal'},{i % 4}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return paths, folder / "labels.csv"


def test_evaluate_with_class_folders_writes_table_json_and_plots(tiny_run: Path, tile_folder: Path) -> None:
    res = run_cli("evaluate", tiny_run, tile_folder, "--labels", tile_folder, "--seeds", "2", "--k", "5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tiny_run / "evaluation.json")
    payload = json.loads((tiny_run / "evaluation.json").read_text())
    assert payload["classes"] == ["nuclei", "stroma"] and payload["n_tiles"] == 24
    assert payload["readout"]["tta"] == 1 and payload["readout"]["stain_norm"] == "none"   # recorded, defaults
    assert payload["readout"]["token"] in ("cls", "cls+mean")
    names = set(payload["results"])
    assert names == {f"{f} {p}" for f in ("ssl", "random weights", "handcrafted") for p in ("linear", "knn")}
    for r in payload["results"].values():
        assert 0.0 <= r["balanced_acc"][0] <= 1.0 and len(r["per_split"]["balanced_acc"]) == 2
    # the two generated textures differ in colour and texture: the handcrafted baseline must separate them
    assert payload["results"]["handcrafted linear"]["balanced_acc"][0] >= 0.9
    assert (tiny_run / "plots" / "confusion_matrix.png").stat().st_size > 1000
    assert (tiny_run / "plots" / "embedding_map.png").is_file()
    for label in ("balanced acc", "random weights", "handcrafted"):
        assert label in res.stderr


def test_evaluate_with_a_csv_and_groups_holds_groups_out(tiny_run: Path, tile_folder: Path, tmp_path: Path) -> None:
    tiles = sorted(tile_folder.rglob("*.png"))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,grade,patient\n" + "".join(
        f"{p.relative_to(tile_folder)},{p.parent.name},{i % 3}\n" for i, p in enumerate(tiles)))
    res = run_cli("evaluate", tiny_run, tile_folder, "--labels", csv, "--groups", "patient", "--json",
                  "--k", "5", "--label-column", "grade")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["groups"] == ["0", "1", "2"] and "leave-one-group-out over 3 groups" in payload["split"]
    assert len(payload["results"]["ssl linear"]["per_split"]["balanced_acc"]) == 3


@pytest.mark.parametrize("args,pattern", [
    (["--labels", "{csv_unknown}"], "not among the inputs"),
    (["--labels", "{csv}", "--groups", "nope"], "--groups nope"),
    (["--labels", "{folder}", "--group-pattern", "(["], "not a regular expression"),
    (["--labels", "{missing}"], "does not exist"),
])
def test_evaluate_bad_labels_are_one_line_exit_2_and_write_nothing(tiny_run: Path, tile_folder: Path, tmp_path: Path,
                                                                    args: list[str], pattern: str) -> None:
    (tmp_path / "unknown.csv").write_text("path,label\nnuclei/nuclei_000.png,a\nnot/there.png,b\n")
    (tmp_path / "ok.csv").write_text("path,label\nnuclei/nuclei_000.png,a\nstroma/stroma_000.png,b\n")
    before = (tiny_run / "evaluation.json").stat().st_mtime_ns if (tiny_run / "evaluation.json").exists() else None
    subs = {"csv_unknown": tmp_path / "unknown.csv", "csv": tmp_path / "ok.csv", "folder": tile_folder,
            "missing": tmp_path / "nope.csv"}
    res = run_cli("evaluate", tiny_run, tile_folder, *[a.format(**subs) for a in args])
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], res.stderr
    after = (tiny_run / "evaluation.json").stat().st_mtime_ns if (tiny_run / "evaluation.json").exists() else None
    assert before == after


@pytest.mark.slow
def test_mil_finds_the_planted_slide_signal_and_draws_attention(tiny_run: Path, planted_slides) -> None:  # noqa: ANN001
    paths, labels = planted_slides
    res = run_cli("mil", tiny_run, *paths, "--labels", labels, "--slide-mpp", "0.5", "--seeds", "1",
                  "--epochs", "40")
    assert res.returncode == 0, res.stderr
    payload = json.loads((tiny_run / "mil.json").read_text())
    assert payload["n_bags"] == 16 and payload["split"] == "leave-one-group-out"
    results = payload["results"]
    assert set(results) == {"abmil (ssl)", "mean pooling (ssl)", "abmil (random weights)"}
    # one nuclei tile among nine stroma tiles decides the label: well above chance (AUC 0.5)
    assert results["abmil (ssl)"]["auc"][0] >= 0.8, results
    maps = payload["attention_maps"]
    assert len(maps) == 16 and all(Path(m).stat().st_size > 1000 for m in maps)


def test_mil_on_a_tiles_parquet_matches_bags_by_slide(tiny_run: Path, planted_slides, tmp_path: Path) -> None:  # noqa: ANN001
    """BAGS as a tiles.parquet (what `embed` writes): embeddings are read, not recomputed."""
    import pandas as pd

    paths, labels = planted_slides
    rng = np.random.default_rng(0)
    rows = [{"slide": str(p), "x": 32 * (j % 3), "y": 32 * (j // 3), "level": 0, "read_px": 32, "out_px": 32,
             "mpp": 0.5, "tissue": 1.0, "embedding": (rng.normal(size=8) + (4.0 if (i % 2 and j == 4) else 0.0))
             .astype(np.float32)} for i, p in enumerate(paths) for j in range(9)]
    pd.DataFrame(rows).to_parquet(tmp_path / "tiles.parquet")
    res = run_cli("mil", tiny_run, tmp_path / "tiles.parquet", "--labels", labels, "--seeds", "1",
                  "--epochs", "100", "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert set(payload["results"]) == {"abmil (ssl)", "mean pooling (ssl)"}   # no pixels: no random-weight row
    assert payload["results"]["abmil (ssl)"]["auc"][0] >= 0.8
    assert payload["readout"] is None          # a parquet `embed` did not write records no readout
    # a readout applies when embedding: asking for one on ready embeddings is refused
    res = run_cli("mil", tiny_run, tmp_path / "tiles.parquet", "--labels", labels, "--tta", "8")
    assert res.returncode == 2 and "sslkit pathology embed" in res.stderr, res.stderr


def test_mil_labels_naming_an_unknown_slide_is_one_line_exit_2(tiny_run: Path, planted_slides, tmp_path: Path) -> None:  # noqa: ANN001
    paths, labels = planted_slides
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(labels.read_text().splitlines(keepends=True)[:5]) + "ghost.svs,tumour,0\n")
    before = (tiny_run / "mil.json").stat().st_mtime_ns if (tiny_run / "mil.json").exists() else None
    res = run_cli("mil", tiny_run, *paths[:4], "--labels", bad, "--slide-mpp", "0.5")
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "ghost.svs" in lines[0], res.stderr
    assert before == ((tiny_run / "mil.json").stat().st_mtime_ns if (tiny_run / "mil.json").exists() else None)
