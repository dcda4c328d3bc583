"""SpineMet-FL shared code: cohort synthesis, DICOM I/O, preprocessing, models, metrics.

Nothing in ``spinemet.common`` imports Flower: the hospital side (``spinemet.client``), the
coordinator (``spinemet.server``) and the simulations build on it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spinemet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
