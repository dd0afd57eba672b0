//! In-kernel storage tests (issue 6).

use super::KernelTest;

pub static TESTS: &[KernelTest] = &[];
