//! The DMA service (skeleton; see issue 3).
#![no_std]
extern crate alloc;

pub mod phys;
