//! Which way the data of a streaming mapping flows, as a value and as a type.
//!
//! Linux's `enum dma_data_direction` has four values; the fourth, `DMA_NONE`, exists only to
//! catch uninitialised variables at run time. Here there are three, and an invalid direction
//! cannot be written at all.
//!
//! Direction matters because it decides what the CPU may do with a mapped buffer and what the
//! platform must do at each ownership hand-over (see dma-api-howto, "DMA Direction"):
//! - `ToDevice`: the CPU wrote the data, the device reads it. Before the device looks, CPU caches
//!   (or a bounce copy) must be pushed out; nothing needs to come back, so reading the buffer
//!   back through the mapping means nothing and is not offered.
//! - `FromDevice`: the device writes, the CPU reads afterwards. Before the CPU looks, stale cache
//!   lines must be dropped (or the bounce copy brought back). The CPU writing into it is pointless:
//!   the device overwrites it, so no write access is offered.
//! - `Bidirectional`: both; every hand-over does both kinds of work.
//!
//! The marker types [`ToDevice`], [`FromDevice`] and [`Bidirectional`] carry the direction in a
//! mapping's type, so an access that makes no sense is a compile error:
//!
//! ```compile_fail,E0599
//! // There is no fourth direction: DMA_NONE cannot be written.
//! let d = dma::DmaDirection::None;
//! ```
//!
//! ```compile_fail,E0277
//! // The set of directions is sealed: a crate cannot invent its own.
//! #[derive(Clone, Copy)]
//! struct Sideways;
//! impl dma::Direction for Sideways {
//!     const DIRECTION: dma::DmaDirection = dma::DmaDirection::ToDevice;
//! }
//! ```

use core::fmt;

/// A direction as a run-time value, for the raw (Linux-shaped) layer, the debug tracker and
/// the mapper trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device reads memory the CPU wrote (transmit, command, write-to-disk).
    ToDevice,
    /// The device writes memory the CPU reads afterwards (receive, read-from-disk).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl DmaDirection {
    /// Whether the device reads the memory (so CPU data must reach it at map and at
    /// `sync_for_device`).
    pub const fn device_reads(self) -> bool {
        matches!(self, DmaDirection::ToDevice | DmaDirection::Bidirectional)
    }

    /// Whether the device writes the memory (so device data must reach the CPU at
    /// `sync_for_cpu` and at unmap).
    pub const fn device_writes(self) -> bool {
        matches!(self, DmaDirection::FromDevice | DmaDirection::Bidirectional)
    }

    /// Linux's name for the direction, used in reports so they read like the kernel's.
    pub const fn linux_name(self) -> &'static str {
        match self {
            DmaDirection::ToDevice => "DMA_TO_DEVICE",
            DmaDirection::FromDevice => "DMA_FROM_DEVICE",
            DmaDirection::Bidirectional => "DMA_BIDIRECTIONAL",
        }
    }
}

impl fmt::Display for DmaDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.linux_name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A direction as a type. Sealed: only [`ToDevice`], [`FromDevice`] and [`Bidirectional`].
pub trait Direction: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The run-time value of this direction.
    const DIRECTION: DmaDirection;
}

/// Directions in which the device writes, so that reading the buffer after `sync_for_cpu`
/// returns something the device produced.
pub trait CpuReadable: Direction {}

/// Directions in which the device reads, so that writing the buffer before `sync_for_device`
/// changes what the device sees.
pub trait CpuWritable: Direction {}

/// The device only reads the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToDevice;

/// The device only writes the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FromDevice;

/// The device reads and writes the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bidirectional;

impl sealed::Sealed for ToDevice {}
impl sealed::Sealed for FromDevice {}
impl sealed::Sealed for Bidirectional {}

impl Direction for ToDevice {
    const DIRECTION: DmaDirection = DmaDirection::ToDevice;
}
impl Direction for FromDevice {
    const DIRECTION: DmaDirection = DmaDirection::FromDevice;
}
impl Direction for Bidirectional {
    const DIRECTION: DmaDirection = DmaDirection::Bidirectional;
}

impl CpuWritable for ToDevice {}
impl CpuReadable for FromDevice {}
impl CpuReadable for Bidirectional {}
impl CpuWritable for Bidirectional {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_reads_and_who_writes() {
        assert!(DmaDirection::ToDevice.device_reads());
        assert!(!DmaDirection::ToDevice.device_writes());
        assert!(DmaDirection::FromDevice.device_writes());
        assert!(!DmaDirection::FromDevice.device_reads());
        assert!(DmaDirection::Bidirectional.device_reads());
        assert!(DmaDirection::Bidirectional.device_writes());
        assert_eq!(ToDevice::DIRECTION, DmaDirection::ToDevice);
        assert_eq!(FromDevice::DIRECTION.linux_name(), "DMA_FROM_DEVICE");
        assert_eq!(Bidirectional::DIRECTION, DmaDirection::Bidirectional);
    }
}
