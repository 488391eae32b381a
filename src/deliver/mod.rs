//! Deliver: the outbound C-STORE SCU that pushes results (SC, SR) to a destination, and the
//! classification of its faults into transient (retry later) and permanent (dead letter).
