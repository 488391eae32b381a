//! Which SOP classes and transfer syntaxes the SCP negotiates.

pub use crate::dimse::VERIFICATION;

/// The storage SOP classes the node processes: MR Image Storage and Enhanced MR Image Storage.
pub const MR_STORAGE_CLASSES: &[&str] = &["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"];

/// Common storage SOP classes a PACS may push along with a study. Under
/// `other_storage = "discard"` they are accepted and answered with success without being stored;
/// under `refuse` their presentation contexts are rejected.
pub const OTHER_STORAGE_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",      // Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",    // Digital X-Ray (presentation)
    "1.2.840.10008.5.1.4.1.1.1.1.1",  // Digital X-Ray (processing)
    "1.2.840.10008.5.1.4.1.1.1.2",    // Digital Mammography X-Ray (presentation)
    "1.2.840.10008.5.1.4.1.1.2",      // CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",    // Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",    // Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.3.1",    // Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.4.2",    // MR Spectroscopy
    "1.2.840.10008.5.1.4.1.1.4.3",    // Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",    // Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.6.1",    // Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.7",      // Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",    // Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",    // Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",    // Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",    // Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.11.1",   // Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.11.2",   // Color Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.12.1",   // X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.20",     // Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.30",     // Parametric Map
    "1.2.840.10008.5.1.4.1.1.66",     // Raw Data
    "1.2.840.10008.5.1.4.1.1.66.1",   // Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.3",   // Deformable Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.4",   // Segmentation
    "1.2.840.10008.5.1.4.1.1.77.1.4", // VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.88.11",  // Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  // Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  // Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  // Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  // Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59",  // Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.67",  // X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.104.1",  // Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.128",    // Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130",    // Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.481.2",  // RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  // RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  // RT Plan
];

/// Implicit VR Little Endian.
pub(crate) const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub(crate) const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Deflated Explicit VR Little Endian.
pub(crate) const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
/// Explicit VR Big Endian (retired; refused).
pub(crate) const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// Transfer syntaxes the SCP accepts: exactly those the node's dicom-rs build decodes
/// (`dicom-pixeldata` with `native`, `charls`, `openjp2`). In the order the SCP prefers them
/// when a peer proposes several in one context, dicom-ul picks the first the *peer* lists that
/// is also here.
///
/// Left out on purpose: Explicit VR Big Endian (retired); JPEG Extended 1.2.840.10008.1.2.4.51,
/// because its decoder (jpeg-decoder 0.3) refuses any sample precision other than 8 bits for
/// lossy processes, so the 12-bit process 4 that MR would use cannot be decoded; JPEG XL and
/// HTJ2K, whose codecs are not enabled in this build.
pub const ACCEPTED_TRANSFER_SYNTAXES: &[&str] = &[
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless (charls)
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless (charls)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless, First-Order Prediction (jpeg-decoder)
    "1.2.840.10008.1.2.4.57", // JPEG Lossless, Non-Hierarchical (jpeg-decoder)
    "1.2.840.10008.1.2.4.50", // JPEG Baseline 8-bit (jpeg-decoder)
    "1.2.840.10008.1.2.5",    // RLE Lossless (native)
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless Only (openjp2)
    "1.2.840.10008.1.2.4.91", // JPEG 2000 (openjp2)
];

/// Whether `sop_class_uid` is one the node processes (MR or Enhanced MR Image Storage).
pub fn is_mr_storage(sop_class_uid: &str) -> bool {
    MR_STORAGE_CLASSES.contains(&sop_class_uid)
}

/// A UID as it may come off the wire (trailing NUL or space padding removed).
pub(crate) fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' ']).trim_start_matches(' ')
}

#[cfg(test)]
mod tests {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

    use super::*;

    #[test]
    fn every_accepted_transfer_syntax_decodes_in_this_build() {
        for uid in ACCEPTED_TRANSFER_SYNTAXES {
            let ts = TransferSyntaxRegistry
                .get(uid)
                .unwrap_or_else(|| panic!("{uid} not in the registry"));
            assert!(!ts.is_unsupported(), "{uid} is a stub in this build");
            assert!(ts.can_decode_all(), "{uid} cannot decode pixel data in this build");
            assert!(
                dicom_ul::association::server::is_supported(uid),
                "{uid}: dicom-ul would refuse it"
            );
        }
        assert!(!ACCEPTED_TRANSFER_SYNTAXES.contains(&EXPLICIT_VR_BE));
        assert!(!ACCEPTED_TRANSFER_SYNTAXES.contains(&"1.2.840.10008.1.2.4.51"));
    }

    #[test]
    fn class_lists_do_not_overlap() {
        for uid in OTHER_STORAGE_CLASSES {
            assert!(!is_mr_storage(uid), "{uid}");
            assert_ne!(*uid, VERIFICATION);
        }
        assert!(is_mr_storage("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_mr_storage("1.2.840.10008.5.1.4.1.1.4.1"));
        assert_eq!(trim_uid("1.2.840.10008.1.2\0"), IMPLICIT_VR_LE);
    }
}
