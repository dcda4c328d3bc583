"""Reading real-world DICOM: walk any folder layout, group studies and series, order slices
along the normal, tell T1/T2/STIR apart, load pixels through pydicom's plugins, and reject
what cannot be used with a reason a person understands.

>>> from spinemet.common.dicom import scan
>>> result = scan([Path("site_data")])
>>> t1 = result.studies[0].series_for("T1"); vol = t1.load()   # (slices, rows, cols) float32
"""

from .header import Frame, Rejected, read_header
from .scan import ScanResult, Series, Study, scan
from .sequence import SEQUENCES, SequenceTags, classify_sequence
from .volume import DicomLoadError

__all__ = ["scan", "ScanResult", "Study", "Series", "Rejected", "Frame", "read_header",
           "DicomLoadError", "classify_sequence", "SequenceTags", "SEQUENCES"]
