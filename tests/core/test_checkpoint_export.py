from __future__ import annotations

import os
import pickle

import pytest
import torch

import sslkit
from sslkit.core.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from sslkit.core.errors import UserError
from sslkit.core.export import export_encoder, encoder_spec, load_encoder
from sslkit.domains.toy.model import MLPEncoder


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "model": _Evil(str(marker))}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("error")   # the refusal is the only message: no torch warning before it
def test_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_atomic_save_leaves_no_temp_and_round_trips(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(4.0)}})
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_checkpoint_from_other_domain_or_architecture_is_refused(tmp_path):
    model = MLPEncoder(8, 16, 4)
    state = {"domain": "toy", "method": "vicreg", "model": model.state_dict()}
    check_compatible(state, domain="toy", method="vicreg", model=model, path=tmp_path)
    with pytest.raises(UserError, match="written by toy/vicreg"):
        check_compatible(state, domain="graph", method="scgc", model=model, path=tmp_path)
    with pytest.raises(UserError, match="does not fit this model"):
        check_compatible(state, domain="toy", method="vicreg", model=MLPEncoder(8, 32, 4), path=tmp_path)


def test_export_and_load_encoder_round_trip(tmp_path):
    enc = MLPEncoder(8, 16, 4)
    export_encoder(enc, encoder_spec("toy", "mlp", in_dim=8, hidden_dim=16, out_dim=4), tmp_path / "enc")
    loaded = sslkit.load_encoder(tmp_path / "enc")
    x = torch.randn(3, 8)
    assert torch.equal(enc(x), loaded(x))
    assert not loaded.training
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "encoder.safetensors"]


def test_load_encoder_on_a_folder_without_export(tmp_path):
    with pytest.raises(UserError, match="no exported encoder"):
        load_encoder(tmp_path)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_permissions_open_would_give(tmp_path, umask, mode):
    """Every atomic write (checkpoints, text, NIfTI predictions, the medical3d cache, tabular CSV) follows the umask like
    open() does; mkstemp alone left them all 0600, unreadable to the user's group on a shared cluster."""
    import os

    import numpy as np
    import pyarrow as pa

    from sslkit.core import files
    from sslkit.core.files import atomic_write_text
    from sslkit.domains.medical3d.io import write_nifti
    from sslkit.domains.medical3d.preprocess import _atomic_npy
    from sslkit.domains.tabular.samples import write_csv_atomic

    before = os.umask(umask)
    files._umask.cache_clear()
    try:
        save_checkpoint(tmp_path / "last.pt", {"step": 1})
        atomic_write_text(tmp_path / "recipe.yaml", "a: 1\n")
        write_nifti(tmp_path / "p.nii.gz", np.zeros((2, 2, 2), np.int16), np.eye(4))
        _atomic_npy(tmp_path / "c.npy", np.zeros(3))
        write_csv_atomic(pa.table({"x": [1]}), tmp_path / "t.csv")
        export_encoder(torch.nn.Linear(2, 2), {"kind": "x"}, tmp_path / "enc")         # safetensors alone made 0600
        got = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
        got.update({f"enc/{p.name}": p.stat().st_mode & 0o777 for p in (tmp_path / "enc").iterdir()})
        folder = (tmp_path / "enc").stat().st_mode & 0o777
    finally:
        os.umask(before)
        files._umask.cache_clear()
    assert got == dict.fromkeys(["last.pt", "recipe.yaml", "p.nii.gz", "c.npy", "t.csv", "enc/encoder.safetensors",
                                 "enc/config.json"], mode)
    assert folder == mode | (mode & 0o444) >> 2                # rwx where r: 0755 / 0750, as mkdir gives


def test_export_of_a_run_without_a_checkpoint_says_so(tmp_path):
    from sslkit.core.export import export_from_run
    from sslkit.core.recipes import Recipe
    from sslkit.core.runs import Run

    Run.open(tmp_path / "run", domain="toy", recipe=Recipe(domain="toy", method="vicreg"))
    with pytest.raises(UserError, match="has no checkpoint yet .* pretrain` again with --overwrite"):
        export_from_run(tmp_path / "run", tmp_path / "out", domain="toy")
    assert not (tmp_path / "out").exists()


def test_an_unfinished_run_says_how_to_complete_or_export_it(tmp_path):
    """A run folder with a checkpoint but no encoder/ (stopped before the end) names the two ways on, in its domain."""
    import json

    import pytest

    from sslkit.core.errors import UserError
    from sslkit.core.export import load_encoder

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "manifest.json").write_text(json.dumps({"domain": "audio"}))
    with pytest.raises(UserError, match=r"unfinished run .* `sslkit audio pretrain DATA\.\.\. --resume --out .*"
                                        r"`sslkit audio export "):
        load_encoder(run)
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(UserError, match="holds no exported encoder .* `sslkit audio export`"):
        load_encoder(run)
