//! Intel 8254x (e1000) driver — under construction (issue 5).
#![no_std]
