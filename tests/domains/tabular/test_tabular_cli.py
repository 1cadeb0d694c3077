"""End to end through the CLI on real data (a UCI Adult subsample and scikit-learn's wine)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import sslkit
from sslkit.core.embeddings import read_embeddings
from sslkit.domains.tabular.samples import read_adult, write_csv_atomic
from tests.helpers import sigterm_at_first_checkpoint

from .conftest import ENV, run_cli


def _one_line_exit_2(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0], lines[0]


def test_pretrain_writes_run_with_preprocessing(tiny_run):
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "preprocess.json", "checkpoints/last.pt",
                 "encoder/config.json", "encoder/encoder.safetensors", "plots/loss.png"):
        assert (tiny_run / name).is_file(), name
    pre = json.loads((tiny_run / "preprocess.json").read_text())
    assert pre["ignored"]["income"] == "target" and pre["ignored"]["id"] == "id"   # the target is never a feature
    assert "income" not in [c["name"] for c in pre["numeric"] + pre["categorical"]]
    losses = [r["loss"] for r in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0]


def test_embed_keeps_ids_and_matches_load_encoder(tiny_run, adult_csv, tmp_path):
    out = tmp_path / "emb.parquet"
    res = run_cli("embed", tiny_run, adult_csv, "--out", out)
    assert res.returncode == 0, res.stderr
    ids, z = read_embeddings(out)
    assert ids == list(range(1, 601)) and z.shape == (600, 32)                 # the table's own id column
    # the same rows through sslkit.load_encoder with the saved preprocessing give the same vectors
    from sslkit.domains.tabular.inference import embed_rows, encode_table
    from sslkit.domains.tabular.preprocess import Preprocessor

    enc = sslkit.load_encoder(tiny_run)
    pre = Preprocessor.from_dict(enc.sslkit_config["extra"]["preprocess"])
    again = embed_rows(enc, encode_table(pre, adult_csv, keep=["id"]))
    np.testing.assert_allclose(again, z, rtol=1e-4, atol=1e-5)
    assert np.std(z, axis=0).mean() > 1e-3                                     # not collapsed to a constant
    _one_line_exit_2(run_cli("embed", tiny_run, adult_csv, "--out", out), "--overwrite")


def test_embed_reuses_the_saved_preprocessing_on_a_subset(tiny_run, adult_csv, tmp_path):
    """50 rows on their own get the vectors they have in the full-table embed: the run's preprocessing (scales,
    bins, category codes fitted on the pretraining table) is reused, not refitted on the subset."""
    import pyarrow.csv as pcsv

    full = pcsv.read_csv(adult_csv)
    take = np.random.default_rng(0).choice(full.num_rows, 50, replace=False)
    take = take[np.argsort(full.column("age").to_numpy()[take])]               # skewed: the oldest rows last
    write_csv_atomic(full.take(pa.array(take)), tmp_path / "sub.csv")
    for name, table in (("full", adult_csv), ("sub", tmp_path / "sub.csv")):
        res = run_cli("embed", tiny_run, table, "--out", tmp_path / f"{name}.parquet")
        assert res.returncode == 0, res.stderr
    ids_full, z_full = read_embeddings(tmp_path / "full.parquet")
    ids_sub, z_sub = read_embeddings(tmp_path / "sub.parquet")
    row = {i: k for k, i in enumerate(ids_full)}
    assert ids_sub == [ids_full[k] for k in take]
    np.testing.assert_allclose(z_sub, z_full[[row[i] for i in ids_sub]], rtol=1e-4, atol=1e-5)


def test_embed_unseen_category_and_column_mismatch(tiny_run, tmp_path):
    table = read_adult(limit=50)
    wc = table.column_names.index("workclass")
    odd = table.set_column(wc, "workclass", pa.array(["Space-agency"] * 50))
    write_csv_atomic(odd, tmp_path / "odd.csv")
    res = run_cli("embed", tiny_run, tmp_path / "odd.csv", "--out", tmp_path / "odd.parquet")
    assert res.returncode == 0, res.stderr                                     # unknown token, not a crash
    # the vectors are those of the same rows with workclass set to the "unknown" code by hand
    from sslkit.domains.tabular.inference import embed_rows, encode_table
    from sslkit.domains.tabular.preprocess import UNKNOWN, Preprocessor

    ids, z = read_embeddings(tmp_path / "odd.parquet")
    enc = sslkit.load_encoder(tiny_run)
    pre = Preprocessor.from_dict(enc.sslkit_config["extra"]["preprocess"])
    write_csv_atomic(table, tmp_path / "plain.csv")
    rows = encode_table(pre, tmp_path / "plain.csv", keep=["id"])
    j = [c.name for c in pre.categorical].index("workclass")
    assert (rows.cat[:, j] != UNKNOWN).all()                                   # known (or missing) before the change
    rows.cat[:, j] = UNKNOWN
    assert np.isfinite(z).all() and ids == list(range(1, 51))
    np.testing.assert_allclose(z, embed_rows(enc, rows), rtol=1e-4, atol=1e-5)
    assert not np.allclose(z, embed_rows(enc, encode_table(pre, tmp_path / "plain.csv", keep=["id"])), atol=1e-3)
    wrong = table.drop_columns(["age"]).append_column("height", pa.array([1.7] * 50))
    write_csv_atomic(wrong, tmp_path / "wrong.csv")
    res = run_cli("embed", tiny_run, tmp_path / "wrong.csv", "--out", tmp_path / "w.parquet")
    _one_line_exit_2(res, "missing age; extra height")
    assert not (tmp_path / "w.parquet").exists()


def test_evaluate_prints_table_and_writes_json(tiny_run, adult_csv):
    res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "2", "--models", "linear,hgb")
    assert res.returncode == 0, res.stderr
    assert "raw+embeddings" in res.stderr and "accuracy" in res.stderr and "2 seeds" in res.stderr
    assert res.stdout.strip() == str(tiny_run / "evaluation.json")             # the report's path, as embed/export print theirs
    report = json.loads((tiny_run / "evaluation.json").read_text())
    assert report["task"] == "classification" and report["seeds"] == 2
    for key in ("raw / linear", "embeddings / hgb", "raw+embeddings / linear"):
        acc, std = report["results"][key]["accuracy"]
        assert 0.6 < acc <= 1.0 and len(report["results"][key]["per_seed"]) == 2
    assert report["results"]["raw / linear"]["auc"][0] > 0.8                  # Adult is learnable from raw features
    assert (tiny_run / "plots" / "evaluation.png").is_file() and (tiny_run / "plots" / "embedding_map.png").is_file()
    assert not any(k.startswith("raw-ple") for k in report["results"])         # value × vector tokens: no PLE baseline


def test_evaluate_adds_the_encoders_piecewise_linear_codes_as_a_raw_baseline(adult_csv, tmp_path):
    run = tmp_path / "binned"
    res = run_cli("pretrain", adult_csv, "--target", "income", "--id", "id", "-r", "tiny", "--out", run,
                  "--set", "train.steps=5", "--set", "model.num_bins=8", "--set", "model.bin_edges=data")
    assert res.returncode == 0, res.stderr
    res = run_cli("evaluate", run, adult_csv, "--target", "income", "--seeds", "2", "--models", "linear,hgb",
                  "--test", adult_csv)
    assert res.returncode == 0, res.stderr
    assert "raw-ple" in res.stderr
    report = json.loads((run / "evaluation.json").read_text())
    results = report["results"]
    assert "piecewise-linear" in report["raw-ple"] and "raw-ple / linear" in results and "raw-ple / hgb" not in results   # trees already see the raw values
    assert results["raw-ple / linear"]["accuracy"][0] > 0.75
    assert (run / "plots" / "evaluation.png").is_file()


def test_raw_ple_is_skipped_with_a_warning_when_too_wide(adult_csv, tmp_path, monkeypatch, capsys):
    from sslkit.core.runs import Run
    from sslkit.domains.tabular import evaluation_report as er

    run = tmp_path / "binned"
    res = run_cli("pretrain", adult_csv, "--target", "income", "--id", "id", "-r", "tiny", "--out", run,
                  "--set", "train.steps=2", "--set", "model.num_bins=8")
    assert res.returncode == 0, res.stderr
    encoder = sslkit.load_encoder(run)
    width, fits = er.ple_size(encoder, 600)
    assert width == encoder.tokenizer.n_num * 8 and fits
    sets, *_ = er.load_labelled(Run.load(run, "tabular"), encoder, adult_csv, "income", None, [])
    assert sets["raw-ple"].dense.shape[1] > width
    monkeypatch.setattr(er, "PLE_MAX_COLUMNS", width - 1)
    sets, *_ = er.load_labelled(Run.load(run, "tabular"), encoder, adult_csv, "income", None, [])
    assert "raw-ple" not in sets and "raw-ple baseline skipped" in capsys.readouterr().err
    sets, *_ = er.load_labelled(Run.load(run, "tabular"), encoder, adult_csv, "income", None, [], ple=True)
    assert "raw-ple" in sets                                                   # a --test table follows the training one


def test_evaluate_with_few_labels(tiny_run, adult_csv):
    res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "2", "--models", "linear",
                  "--label-fraction", "0.25")
    assert res.returncode == 0, res.stderr
    assert "0.25 of the training labels: 120 labelled training rows per seed" in " ".join(res.stderr.split())
    report = json.loads((tiny_run / "evaluation.json").read_text())
    assert report["label_fraction"] == 0.25
    assert {s["train_rows"] for s in report["results"]["embeddings / linear"]["settings"]} == {120}   # 25% of 480
    _one_line_exit_2(run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--label-fraction", "0"),
                     "--label-fraction 0.0")
    _one_line_exit_2(run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--label-fraction", "0.02"),
                     "raise it")


def test_evaluate_regression_on_a_numeric_target(tiny_run, adult_csv):
    res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "1", "--models", "linear",
                  "--task", "regression")
    _one_line_exit_2(res, "not numeric")


def test_evaluate_regression_reports_rmse_and_r2(tmp_path):
    from sslkit.domains.tabular.samples import sklearn_table

    data = write_csv_atomic(sklearn_table("wine"), tmp_path / "wine.csv")      # alcohol from the other measurements
    run = tmp_path / "run"
    res = run_cli("pretrain", data, "--target", "alcohol", "--drop", "target", "--id", "id", "-r", "tiny", "--out", run,
                  "--set", "train.batch_size=32")
    assert res.returncode == 0, res.stderr
    res = run_cli("evaluate", run, data, "--target", "alcohol", "--drop", "target", "--seeds", "2", "--models",
                  "linear,hgb")
    assert res.returncode == 0, res.stderr
    report = json.loads((run / "evaluation.json").read_text())
    assert report["task"] == "regression" and "r2" in res.stdout + res.stderr
    raw = report["results"]["raw / linear"]
    assert raw["r2"][0] > 0.3 and raw["rmse"][0] < 0.81                   # better than the mean (alcohol's std 0.81)
    assert {"rmse", "r2"} <= set(report["results"]["embeddings / hgb"])


def test_regression_scores_match_scikit_learn():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error, r2_score

    from sslkit.domains.tabular.downstream import _scores

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ [1.0, -2.0, 0.5] + rng.normal(size=200)
    model = Ridge().fit(x[:150], (y[:150] - 1.0) / 2.0)                    # fit on a standardised target, as evaluate does
    got = _scores("regression", model, x[150:], y[150:], y_mean=1.0, y_std=2.0)
    pred = model.predict(x[150:]) * 2.0 + 1.0
    assert got["rmse"] == pytest.approx(mean_squared_error(y[150:], pred) ** 0.5)
    assert got["r2"] == pytest.approx(r2_score(y[150:], pred))


def test_export_and_load_encoder(tiny_run, tmp_path):
    out = tmp_path / "exported"
    res = run_cli("export", tiny_run, "--out", out)
    assert res.returncode == 0, res.stderr
    enc = sslkit.load_encoder(out)
    ref = load_file(str(tiny_run / "encoder" / "encoder.safetensors"))
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in ref.items())
    assert enc.sslkit_config["kind"] == "t-jepa" and "preprocess" in enc.sslkit_config["extra"]


def test_scarf_on_wine_and_evaluate(tmp_path):
    from sslkit.domains.tabular.samples import sklearn_table

    data = write_csv_atomic(sklearn_table("wine"), tmp_path / "wine.csv")
    run = tmp_path / "scarf"
    res = run_cli("pretrain", data, "--target", "target", "--id", "id", "-r", "scarf-tiny", "--out", run,
                  "--set", "train.batch_size=32")
    assert res.returncode == 0, res.stderr
    res = run_cli("evaluate", run, data, "--target", "target", "--seeds", "2", "--models", "linear")
    assert res.returncode == 0, res.stderr
    report = json.loads((run / "evaluation.json").read_text())
    assert report["results"]["embeddings / linear"]["accuracy"][0] > 0.8       # 3 wine cultivars, well separated
    assert sslkit.load_encoder(run).sslkit_config["kind"] == "scarf"


def test_parquet_input_and_sample_data(tmp_path):
    res = run_cli("sample-data", tmp_path / "data")
    assert res.returncode == 0, res.stderr
    adult = pcsv.read_csv(tmp_path / "data" / "adult.csv")
    assert adult.num_rows == 32561 and adult.column_names[-1] == "income"
    assert sorted(set(adult.column("income").to_pylist())) == ["<=50K", ">50K"]
    _one_line_exit_2(run_cli("sample-data", tmp_path / "data"), "--overwrite")
    pq.write_table(pcsv.read_csv(tmp_path / "data" / "breast_cancer.csv"), tmp_path / "bc.parquet")
    res = run_cli("pretrain", tmp_path / "bc.parquet", "--target", "target", "--id", "id", "-r", "tiny",
                  "--out", tmp_path / "run", "--set", "train.steps=5")
    assert res.returncode == 0, res.stderr
    assert len(json.loads((tmp_path / "run" / "preprocess.json").read_text())["numeric"]) == 30


def test_json_lines_and_excel_embed_like_csv(tiny_run, adult_csv, tmp_path):
    """The pretraining run (fitted on CSV) embeds the same rows written as JSON lines or Excel to the same vectors."""
    import openpyxl

    from sslkit.domains.tabular.io import iter_batches

    table = pa.Table.from_batches(list(iter_batches(adult_csv)))     # missing values as JSON null / empty cells
    with open(tmp_path / "adult.jsonl", "w") as fh:
        for row in table.to_pylist():
            fh.write(json.dumps(row) + "\n")
    book = openpyxl.Workbook()
    book.active.append(table.column_names)
    for row in table.to_pylist():
        book.active.append(list(row.values()))
    book.save(tmp_path / "adult.xlsx")
    res = run_cli("embed", tiny_run, adult_csv, "--out", tmp_path / "csv.parquet")
    assert res.returncode == 0, res.stderr
    ids_c, z_c = read_embeddings(tmp_path / "csv.parquet")
    for name in ("adult.jsonl", "adult.xlsx"):
        res = run_cli("embed", tiny_run, tmp_path / name, "--out", tmp_path / f"{name}.parquet")
        assert res.returncode == 0, res.stderr
        ids, z = read_embeddings(tmp_path / f"{name}.parquet")
        assert ids == ids_c and np.array_equal(z, z_c), name


def test_bad_inputs_one_line_exit_2(adult_csv, tiny_run, tmp_path):
    out = tmp_path / "r"
    _one_line_exit_2(run_cli("pretrain", tmp_path / "nope.csv", "--out", out), "does not exist")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n")
    _one_line_exit_2(run_cli("pretrain", ragged, "--out", out), "line 4")
    _one_line_exit_2(run_cli("pretrain", adult_csv, "--target", "salary", "--out", out), "--target salary")
    nan = tmp_path / "nan.csv"
    nan.write_text("a,b,c\n1,,x\n2,,y\n3,,x\n")
    _one_line_exit_2(run_cli("pretrain", nan, "--out", out), "'b' is empty")
    few = tmp_path / "few.csv"
    few.write_text("c,t\n1,a\n1,b\n1,a\n")
    _one_line_exit_2(run_cli("pretrain", few, "--target", "t", "--out", out), "no usable feature columns")
    assert not out.exists()                                                    # nothing written on bad input
    _one_line_exit_2(run_cli("pretrain", adult_csv, "--out", out, "--set", "model.dimm=3"), "model.dimm")
    _one_line_exit_2(run_cli("evaluate", tiny_run, adult_csv, "--target", "salary"), "--target salary")
    one = tmp_path / "one.csv"
    write_csv_atomic(read_adult(limit=60).filter(pa.compute.equal(read_adult(limit=60).column("income"), "<=50K")), one)
    _one_line_exit_2(run_cli("evaluate", tiny_run, one, "--target", "income"), "single class")
    _one_line_exit_2(run_cli("evaluate", tiny_run, adult_csv, "--target", "age"), "was a feature")


@pytest.mark.parametrize("tokens", [[], ["--set", "model.num_bins=8", "--set", "model.bin_edges=data"]],
                         ids=["value-times-vector", "data-fitted-bins"])
def test_resume_after_sigterm_matches_uninterrupted(adult_csv, tmp_path, tokens):
    args = ["-m", "sslkit", "tabular", "pretrain", str(adult_csv), "--target", "income", "--id", "id", "-r", "tiny",
            "--set", "train.steps=150", "--set", "train.checkpoint_every=5", *tokens]
    full = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "full")], capture_output=True, text=True, env=ENV)
    assert full.returncode == 0, full.stderr
    code, err, step = sigterm_at_first_checkpoint([sys.executable, *args, "--out", str(tmp_path / "cut")],
                                                  tmp_path / "cut", ENV)
    assert code == 130 and 0 < step < 150, err                                 # stopped mid-run with a checkpoint
    res = run_cli("pretrain", adult_csv, "--out", tmp_path / "cut", "--resume")
    assert res.returncode == 0, res.stderr
    a = load_file(str(tmp_path / "full" / "encoder" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "cut" / "encoder" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)                             # exactly the same weights


def test_torchrun_two_processes(adult_csv, tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "sslkit", "tabular", "pretrain", str(adult_csv), "--target", "income", "--id", "id",
                          "-r", "tiny", "--out", str(out), "--set", "train.steps=10"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
    assert (out / "encoder" / "encoder.safetensors").is_file()
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 10                     # rank 0 alone logs
    assert sslkit.load_encoder(out).sslkit_config["kind"] == "t-jepa"


def test_piecewise_linear_tokenizer_trains_exports_and_embeds(adult_csv, tmp_path):
    run = tmp_path / "ple"
    res = run_cli("pretrain", adult_csv, "--target", "income", "--id", "id", "-r", "tiny", "--out", run,
                  "--set", "model.num_bins=8", "--set", "model.bin_edges=data", "--set", "train.steps=10")
    assert res.returncode == 0, res.stderr
    enc = sslkit.load_encoder(run)
    assert enc.sslkit_config["kwargs"]["num_bins"] == 8 and enc.tokenizer.num_weight.shape[1:] == (8, 16)
    assert enc.sslkit_config["kwargs"]["bin_edges"] == "data" and enc.tokenizer.edges.shape[1] == 9
    assert not torch.equal(enc.tokenizer.edges[0], enc.tokenizer.edges[1])   # fitted per feature, saved, reloaded
    res = run_cli("embed", run, adult_csv, "--out", tmp_path / "e.parquet")
    assert res.returncode == 0, res.stderr
    ids, z = read_embeddings(tmp_path / "e.parquet")
    assert z.shape == (600, enc.out_dim) and np.isfinite(z).all()


def test_pretrain_reads_a_german_excel_csv(tmp_path):
    """Semicolons, Windows-1252 and decimal commas (Excel's CSV in a German locale): read right and said so."""
    rng = np.random.default_rng(0)
    lines = ["alter;stadt;einkommen;kredit"] + [f"{a};{['Köln', 'München', 'Düsseldorf'][c]};{v:.2f};{'ja' if c else 'nein'}"
                                              .replace(".", ",") for a, c, v in
                                              zip(rng.integers(18, 90, 80), rng.integers(0, 3, 80), rng.normal(3000, 900, 80))]
    data = tmp_path / "kunden.csv"
    data.write_bytes("\r\n".join(lines).encode("cp1252"))
    res = run_cli("pretrain", data, "--target", "kredit", "-r", "tiny", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "reading kunden.csv as semicolon-separated, cp1252 text, decimal comma" in res.stderr
    pre = json.loads((tmp_path / "run" / "preprocess.json").read_text())
    assert [c["name"] for c in pre["numeric"]] == ["alter", "einkommen"]
    (stadt,) = pre["categorical"]
    assert stadt["name"] == "stadt" and "Düsseldorf" in json.dumps(stadt, ensure_ascii=False)



def test_embed_errors_name_the_value_the_id_and_the_output(tiny_run, tmp_path):
    table = read_adult(limit=30)
    age = table.column_names.index("age")
    ages = [str(v) for v in table.column("age").to_pylist()]
    ages[4] = "abc"
    write_csv_atomic(table.set_column(age, "age", pa.array(ages)), tmp_path / "abc.csv")
    res = run_cli("embed", tiny_run, tmp_path / "abc.csv", "--out", tmp_path / "e.parquet")
    _one_line_exit_2(res, "column 'age' holds 'abc' in row 5, which is not a number")
    assert "--categorical age" in res.stderr and "--numeric" not in res.stderr
    write_csv_atomic(table, tmp_path / "t.csv")
    _one_line_exit_2(run_cli("embed", tiny_run, tmp_path / "t.csv", "--id", "age", "--out", tmp_path / "e.parquet"),
                     "'age' was a feature of the encoder at pretraining, so it cannot be the id")
    _one_line_exit_2(run_cli("embed", tiny_run, tmp_path / "t.csv", "--out", tmp_path / "e5.csv"),
                     "give a name ending in .parquet")
    assert not (tmp_path / "e5.csv").exists() and not (tmp_path / "e.parquet").exists()


def test_embed_warns_about_a_missing_empty_or_repeated_id(tiny_run, tmp_path):
    table = read_adult(limit=30)
    write_csv_atomic(table.drop_columns(["id"]), tmp_path / "noid.csv")
    res = run_cli("embed", tiny_run, tmp_path / "noid.csv", "--out", tmp_path / "a.parquet")
    assert res.returncode == 0, res.stderr
    assert "has no column 'id' (the run's --id): rows are numbered from 0" in " ".join(res.stderr.split())
    assert read_embeddings(tmp_path / "a.parquet")[0] == list(range(30))
    ids = pa.array([None, None] + [1, 1, 1] + list(range(2, 27)), pa.int64())
    write_csv_atomic(table.set_column(0, "id", ids), tmp_path / "dup.csv")
    res = run_cli("embed", tiny_run, tmp_path / "dup.csv", "--out", tmp_path / "b.parquet")
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stderr.split())
    assert "id column 'id' of" in said and "is empty in 2 row(s)" in said and "2 row(s) share an id" in said


def test_evaluate_target_messages_print_plain_values(tiny_run, tmp_path):
    table = read_adult(limit=60)
    one = table.filter(pa.compute.equal(table.column("income"), "<=50K"))
    write_csv_atomic(one, tmp_path / "one.csv")
    res = run_cli("evaluate", tiny_run, tmp_path / "one.csv", "--target", "income")
    _one_line_exit_2(res, "single class ('<=50K')")
    rare = pa.concat_tables([one, table.filter(pa.compute.equal(table.column("income"), ">50K")).slice(0, 1)])
    write_csv_atomic(rare, tmp_path / "rare.csv")
    res = run_cli("evaluate", tiny_run, tmp_path / "rare.csv", "--target", "income")
    _one_line_exit_2(res, "class '>50K' has one row — drop that row, or choose another --target")
    assert "--task regression" not in res.stderr and "np.str_" not in res.stderr


def test_resume_without_a_run_folder_says_so(adult_csv, tmp_path):
    res = run_cli("pretrain", adult_csv, "--target", "income", "--id", "id", "--drop", "fnlwgt", "--resume", "-r", "tiny",
                  "--set", "train.steps=5", "--out", tmp_path / "nothere")
    _one_line_exit_2(res, f"there is no run folder {tmp_path / 'nothere'} to resume — start the run without --resume")
    # the hint keeps every option given (pasted without --target, it would train on the label)
    assert (f"(sslkit tabular pretrain {adult_csv} --target income --id id --drop fnlwgt --recipe tiny "
            f"--set train.steps=5 --out {tmp_path / 'nothere'})") in res.stderr
    assert not (tmp_path / "nothere").exists()


def test_restart_hint_repeats_the_recorded_command(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    from sslkit.domains.tabular.inference import pretrain_again

    argv = ["/venv/bin/sslkit", "tabular", "pretrain", "my data.csv", "--target", "income", "--id", "id", "--out", "runs/a"]
    run = SimpleNamespace(dir=tmp_path, manifest={"command": argv, "cwd": os.getcwd(), "data": {"paths": ["/d/my data.csv"]}})
    assert pretrain_again(run, resume=False) == ("`sslkit tabular pretrain 'my data.csv' --target income --id id "
                                                 "--out runs/a --overwrite`")
    assert pretrain_again(run, resume=True) == f"`sslkit tabular pretrain '/d/my data.csv' --resume --out {tmp_path}`"
    run.manifest["cwd"] = "/elsewhere"                                         # relative paths: from where it ran
    assert pretrain_again(run, resume=False).startswith("`cd /elsewhere && sslkit tabular pretrain 'my data.csv'")
    run.manifest["command"] = ["pytest"]                                       # no command to repeat: say what to keep
    assert "--target, --id and --drop" in pretrain_again(run, resume=False)


def test_unfinished_run_embed_says_how_to_complete_it_and_export_keeps_the_preprocessing(tiny_run, adult_csv, tmp_path):
    import shutil

    from sslkit.domains.tabular.inference import embed_rows, encode_table
    from sslkit.domains.tabular.preprocess import Preprocessor

    cut = tmp_path / "cut"
    shutil.copytree(tiny_run, cut)
    shutil.rmtree(cut / "encoder")                                             # as a run stopped mid-way leaves it
    for verb in (["embed", cut, adult_csv, "--out", tmp_path / "e.parquet"],
                 ["evaluate", cut, adult_csv, "--target", "income"]):
        res = run_cli(*verb)
        _one_line_exit_2(res, "is an unfinished run")
        assert f"sslkit tabular pretrain {adult_csv.resolve()} --resume --out {cut}" in res.stderr
        assert "<domain>" not in res.stderr
    res = run_cli("export", cut, "--out", tmp_path / "exported")
    assert res.returncode == 0, res.stderr
    assert "is unfinished: exporting the encoder of its last checkpoint" in " ".join(res.stderr.split())
    enc = sslkit.load_encoder(tmp_path / "exported")
    pre = Preprocessor.from_dict(enc.sslkit_config["extra"]["preprocess"])  # usable on its own, as a finished export
    assert embed_rows(enc, encode_table(pre, adult_csv)).shape == (600, enc.out_dim)
    (cut / "checkpoints" / "last.pt").unlink()
    res = run_cli("embed", cut, adult_csv, "--out", tmp_path / "e.parquet")
    _one_line_exit_2(res, "start it again with")
    assert "--target income --id id" in res.stderr and "--out" in res.stderr and "--overwrite`" in res.stderr


def test_help_names_every_recipe_and_table_format():
    from pathlib import Path

    import typer

    from sslkit.domains.tabular.cli import app

    pretrain = typer.main.get_command(app).commands["pretrain"]
    helps = {p.name: p.help for p in pretrain.params}
    recipes = [p.stem for p in (Path(sslkit.__file__).parent / "recipes" / "tabular").glob("*.yaml")]
    assert len(recipes) >= 5 and all(name in helps["recipe"] for name in recipes), helps["recipe"]
    assert all(s in helps["data"] for s in (".xlsx", ".xlsm", ".jsonl", ".ndjson", ".json", ".parquet", ".feather"))


def test_evaluate_report_keeps_earlier_results(tiny_run, adult_csv, tmp_path):
    default = tiny_run / "evaluation.json"
    before = default.read_text() if default.is_file() else None
    report = tmp_path / "reports" / "income.json"
    res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "1", "--models", "linear",
                  "--report", report)
    assert res.returncode == 0, res.stderr
    assert "1 seed)" in " ".join(res.stderr.split()) and "±" not in res.stderr  # one seed: no spread to show
    assert res.stdout.strip() == str(report)
    got = json.loads(report.read_text())
    assert got["target"] == "income" and got["data"] == str(adult_csv) and "embeddings / linear" in got["results"]
    assert (default.read_text() if default.is_file() else None) == before   # the run's own report is untouched
    _one_line_exit_2(run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--report", tmp_path),
                     "is a folder")


def test_evaluate_says_how_embeddings_compare_with_the_raw_models(tiny_run, adult_csv, tmp_path):
    report = tmp_path / "mlp.json"
    res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "1", "--models", "mlp,hgb",
                  "--report", report, "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)                                               # --json: the report itself, not its path
    assert got == json.loads(report.read_text())
    assert got["note"].startswith("the MLP on embeddings") and got["note"] in " ".join(res.stderr.split())
