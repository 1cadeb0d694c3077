from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """karate/ (networkx, no features) and sbm/ (300 nodes, string ids, features, labels) via sample-data."""
    from sslkit.domains.graph.samples import write_samples

    out = tmp_path_factory.mktemp("graph") / "samples"
    write_samples(out)
    return out
