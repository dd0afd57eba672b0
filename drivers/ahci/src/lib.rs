//! AHCI SATA driver — under construction (issue 6).
#![no_std]
