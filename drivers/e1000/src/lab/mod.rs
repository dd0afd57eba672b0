//! Where the driver's ring code comes from: the reference in [`crate::ring`], or a student's
//! file (the labs in `docs/labs/`, driven by `cargo xtask lab`).
//!
//! | feature          | `lab::transmit` is                         | `lab::receive` is                         |
//! |------------------|--------------------------------------------|-------------------------------------------|
//! | (none: normal)   | `ring::transmit`                           | `ring::receive`                           |
//! | `lab-tx`         | `src/lab/transmit.rs` (the student's file) | `ring::receive`                           |
//! | `lab-rx`         | `ring::transmit`                           | `src/lab/receive.rs` (the student's file) |
//! | `… + lab-stub`   | `docs/labs/e1000-tx/stub.rs`               | `docs/labs/e1000-rx/stub.rs`              |
//!
//! The normal build and `cargo xtask test` never compile the student's files; `lab-stub` is how
//! `cargo xtask test` proves the grader fails on the stubs as shipped, whatever a student has
//! written in the slot.

#[cfg(not(feature = "lab-tx"))]
pub(crate) use crate::ring::transmit;
#[cfg(all(feature = "lab-tx", not(feature = "lab-stub")))]
#[path = "transmit.rs"]
pub(crate) mod transmit;
#[cfg(all(feature = "lab-tx", feature = "lab-stub"))]
#[path = "../../../../docs/labs/e1000-tx/stub.rs"]
pub(crate) mod transmit;

#[cfg(not(feature = "lab-rx"))]
pub(crate) use crate::ring::receive;
#[cfg(all(feature = "lab-rx", not(feature = "lab-stub")))]
#[path = "receive.rs"]
pub(crate) mod receive;
#[cfg(all(feature = "lab-rx", feature = "lab-stub"))]
#[path = "../../../../docs/labs/e1000-rx/stub.rs"]
pub(crate) mod receive;

/// Which lab code this build runs, for the log line at bring-up (`None`: the reference).
pub(crate) fn lab_build() -> Option<&'static str> {
    match (cfg!(feature = "lab-tx"), cfg!(feature = "lab-rx")) {
        (false, false) => None,
        (true, false) => Some("transmit ring code from the e1000-tx lab"),
        (false, true) => Some("receive ring code from the e1000-rx lab"),
        (true, true) => Some("transmit and receive ring code from the e1000 labs"),
    }
}

#[cfg(test)]
mod grade;
