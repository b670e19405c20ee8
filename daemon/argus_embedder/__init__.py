"""argus-embedder: a frame-embedding daemon (SigLIP 2 → pgvector)."""

from importlib import metadata

try:
    __version__ = metadata.version("argus-embedder")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
