//! In-kernel network tests (issue 5).

use super::KernelTest;

pub static TESTS: &[KernelTest] = &[];
