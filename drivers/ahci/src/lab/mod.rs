//! Where the controller's command-slot code comes from: the reference in [`crate::slot`], or a
//! student's file (the labs in `docs/labs/`, driven by `cargo xtask lab`).
//!
//! | feature          | `lab::issue` is                          | `lab::complete` is                          |
//! |------------------|------------------------------------------|---------------------------------------------|
//! | (none: normal)   | `slot::issue`                            | `slot::complete`                            |
//! | `lab-issue`      | `src/lab/issue.rs` (the student's file)  | `slot::complete`                            |
//! | `lab-complete`   | `slot::issue`                            | `src/lab/complete.rs` (the student's file)  |
//! | `… + lab-stub`   | `docs/labs/ahci-issue/stub.rs`           | `docs/labs/ahci-complete/stub.rs`           |
//!
//! The normal build and `cargo xtask test` never compile the student's files; `lab-stub` is how
//! `cargo xtask test` proves the grader fails on the stubs as shipped.

#[cfg(not(feature = "lab-issue"))]
pub(crate) use crate::slot::issue;
#[cfg(all(feature = "lab-issue", not(feature = "lab-stub")))]
#[path = "issue.rs"]
pub(crate) mod issue;
#[cfg(all(feature = "lab-issue", feature = "lab-stub"))]
#[path = "../../../../docs/labs/ahci-issue/stub.rs"]
pub(crate) mod issue;

#[cfg(not(feature = "lab-complete"))]
pub(crate) use crate::slot::complete;
#[cfg(all(feature = "lab-complete", not(feature = "lab-stub")))]
#[path = "complete.rs"]
pub(crate) mod complete;
#[cfg(all(feature = "lab-complete", feature = "lab-stub"))]
#[path = "../../../../docs/labs/ahci-complete/stub.rs"]
pub(crate) mod complete;

/// Which lab code this build runs, for the log line at bring-up (`None`: the reference).
pub(crate) fn lab_build() -> Option<&'static str> {
    match (cfg!(feature = "lab-issue"), cfg!(feature = "lab-complete")) {
        (false, false) => None,
        (true, false) => Some("command issue code from the ahci-issue lab"),
        (false, true) => Some("completion code from the ahci-complete lab"),
        (true, true) => Some("issue and completion code from the AHCI labs"),
    }
}

#[cfg(test)]
mod grade;
