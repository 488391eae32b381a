//! Synthetic anatomy and lesions (in progress).
