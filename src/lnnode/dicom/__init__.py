"""Results as DICOM: a SEG of the node delineations and a TID 1500 SR measurement report, on the source series."""

from .export import Exported, SourceSeries, export_label, export_result, export_studies, source_series
from .findings import Finding, findings_from_label, findings_from_result
from .report import Report, make_report
from .series import read_series, write_series

__all__ = [
    "Exported",
    "Finding",
    "Report",
    "SourceSeries",
    "export_label",
    "export_result",
    "export_studies",
    "findings_from_label",
    "findings_from_result",
    "make_report",
    "read_series",
    "source_series",
    "write_series",
]
