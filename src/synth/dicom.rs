//! DICOM series writer (in progress).
