"""`tabular evaluate` counts its seeds × feature sets × models grid on stderr as training counts steps (the MLP
searches on a large table take minutes), with one and with several processes, and writes the same report."""
from __future__ import annotations

import json

from tests.domains.tabular.conftest import run_cli


def test_evaluate_counts_the_grid_it_runs(tiny_run, adult_csv, tmp_path):  # noqa: ANN001
    reports = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"ev{jobs}.json"
        res = run_cli("evaluate", tiny_run, adult_csv, "--target", "income", "--seeds", "2", "--models", "linear",
                      "--jobs", jobs, "--report", out)
        assert res.returncode == 0, res.stderr
        said = " ".join(res.stderr.split())
        # raw, embeddings, raw+embeddings with the linear model, 2 seeds: 6 cells, the last always shown
        assert "evaluate: 6 parts" in said and "evaluate 6/6 raw+embeddings / linear, seed 1" in said
        assert said.index("evaluate 6/6") < said.index("tabular evaluation:")
        reports[jobs] = json.loads(out.read_text())["results"]
    assert reports["1"] == reports["2"]
