"""sslbench: a benchmark harness for self-supervised pretraining of human pose estimators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sslbench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
