"""sslkit: self-supervised pretraining from the command line."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def load_encoder(path):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """Load an exported encoder (export dir or run dir) as a ready ``nn.Module``."""
    from sslkit.core.export import load_encoder as _load

    return _load(path)
