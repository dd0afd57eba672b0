//! Data buffers for requests: owned bytes a streaming mapping can take.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use dma::{AllocError, ArenaBuf, DmaBuf, PageBuffer, PhysMemory};

/// Bytes to read into or write from. The driver maps them with a streaming scatter-gather
/// mapping while the device owns them and gives them back in the completion.
#[derive(Debug)]
pub enum IoBuffer {
    /// Heap bytes (the kernel heap is physically contiguous).
    Heap(Vec<u8>),
    /// Whole frames from the physical memory provider.
    Pages(PageBuffer),
    /// Pages of the controller's own I/O arena ([`dma::arena`]): already mapped for this
    /// controller, so a request made of them maps nothing and invalidates nothing. Visible to
    /// this controller for the arena's life, and to no other device.
    Arena(ArenaBuf),
}

impl IoBuffer {
    /// `len` zeroed bytes in whole frames from `memory` (anywhere: the mapper bounces if the
    /// device cannot reach them).
    pub fn pages(memory: &Arc<dyn PhysMemory>, len: usize) -> Result<IoBuffer, AllocError> {
        PageBuffer::alloc(memory, len, u64::MAX).map(IoBuffer::Pages)
    }
}

impl Deref for IoBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            IoBuffer::Heap(v) => v,
            IoBuffer::Pages(p) => p,
            IoBuffer::Arena(a) => a,
        }
    }
}

impl DerefMut for IoBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            IoBuffer::Heap(v) => v,
            IoBuffer::Pages(p) => p,
            IoBuffer::Arena(a) => a,
        }
    }
}

// SAFETY: both variants are `DmaBuf`s; this forwards to them unchanged, so their promises
// (stable address while owned, exclusive access) carry over.
unsafe impl DmaBuf for IoBuffer {
    fn dma_ptr(&self) -> *const u8 {
        match self {
            IoBuffer::Heap(v) => v.dma_ptr(),
            IoBuffer::Pages(p) => p.dma_ptr(),
            IoBuffer::Arena(a) => a.dma_ptr(),
        }
    }
    fn dma_mut_ptr(&mut self) -> *mut u8 {
        match self {
            IoBuffer::Heap(v) => v.dma_mut_ptr(),
            IoBuffer::Pages(p) => p.dma_mut_ptr(),
            IoBuffer::Arena(a) => a.dma_mut_ptr(),
        }
    }
    fn dma_len(&self) -> usize {
        match self {
            IoBuffer::Heap(v) => v.dma_len(),
            IoBuffer::Pages(p) => p.dma_len(),
            IoBuffer::Arena(a) => a.dma_len(),
        }
    }
}
