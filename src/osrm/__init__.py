"""osrm: merge-ready LoRA fine-tuning with OSRM orthogonal subspaces.

Zhang & Zhou, "Unraveling LoRA Interference: Orthogonal Subspaces for Robust Model Merging",
ACL 2025, arXiv:2505.22934.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("osrm")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    """``osrm.load_merged`` and ``osrm.Predictor`` (loaded on first use: ``import osrm`` stays
    free of torch)."""
    if name in ("load_merged", "Predictor"):
        from osrm import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'osrm' has no attribute {name!r}")
