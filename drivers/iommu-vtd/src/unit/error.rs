//! Why a unit or a domain operation failed, and what the DMA service is told.

use core::fmt;

use dma::error::IommuError;

use crate::SourceId;
use crate::invalidation::InvalidationError;
use crate::iova::IovaError;
use crate::regs;
use crate::tables::TableError;

/// A status change bring-up or shutdown waits for in the global status register (§10.4.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnitStep {
    /// Translation turned off (GSTS.TES clear).
    TranslationDisable,
    /// The invalidation queue turned off (GSTS.QIES clear).
    QueuedInvalidationDisable,
    /// The root table pointer latched (GSTS.RTPS).
    RootTablePointer,
    /// Translation turned on (GSTS.TES).
    TranslationEnable,
}

impl UnitStep {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            UnitStep::TranslationDisable => "translation disable",
            UnitStep::QueuedInvalidationDisable => "queued invalidation disable",
            UnitStep::RootTablePointer => "set root table pointer (GSTS.RTPS)",
            UnitStep::TranslationEnable => "translation enable (GSTS.TES)",
        }
    }
}

impl fmt::Display for UnitStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Why bring-up or a unit-level operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnitError {
    /// Neither 39-bit/3-level nor 48-bit/4-level tables are supported.
    UnsupportedWidth {
        /// CAP.SAGAW.
        sagaw: u8,
    },
    /// A status bit never changed.
    Timeout {
        /// What was waited for.
        what: UnitStep,
    },
    /// Invalidation failed.
    Invalidation(InvalidationError),
    /// Table memory.
    Table(TableError),
    /// Every domain id is in use.
    NoDomainIds {
        /// How many the unit supports.
        supported: u32,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::UnsupportedWidth { sagaw } => write!(
                f,
                "IOMMU supports no 3- or 4-level page tables (SAGAW {}); leave VT-d off",
                regs::sagaw_names(*sagaw)
            ),
            UnitError::Timeout { what } => write!(f, "IOMMU did not acknowledge {what}; the unit is not responding"),
            UnitError::Invalidation(e) => write!(f, "{e}"),
            UnitError::Table(e) => write!(f, "{e}"),
            UnitError::NoDomainIds { supported } => {
                write!(f, "all {supported} IOMMU domain ids are in use; share domains between devices")
            }
        }
    }
}

impl From<InvalidationError> for UnitError {
    fn from(e: InvalidationError) -> UnitError {
        UnitError::Invalidation(e)
    }
}

impl From<TableError> for UnitError {
    fn from(e: TableError) -> UnitError {
        UnitError::Table(e)
    }
}

/// Why a domain operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DomainError {
    /// IOVA allocation.
    Iova(IovaError),
    /// Page tables.
    Table(TableError),
    /// The invalidation did not complete; the range stays quarantined (not reused) until a
    /// later flush succeeds.
    Invalidation(InvalidationError),
    /// Zero-length map.
    ZeroLength,
    /// A mapping with neither read nor write would be not-present.
    NoPermissions,
    /// `phys + len` wraps.
    BadRange,
    /// `unmap` of an address that is not a live mapping.
    NotMapped {
        /// The address.
        iova: u64,
    },
    /// `unmap` with a length that does not match the mapping.
    LengthMismatch {
        /// The address.
        iova: u64,
        /// Bytes (page rounded) the mapping has.
        mapped: u64,
        /// Bytes (page rounded) asked for.
        asked: u64,
    },
    /// The device already has a context entry in another domain.
    AlreadyAttached {
        /// The device.
        source: SourceId,
        /// Its domain.
        domain: u16,
    },
    /// The device is not attached to this domain.
    NotAttached {
        /// The device.
        source: SourceId,
    },
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::Iova(e) => write!(f, "{e}"),
            DomainError::Table(e) => write!(f, "{e}"),
            DomainError::Invalidation(e) => write!(f, "{e}; the range stays quarantined"),
            DomainError::ZeroLength => f.write_str("zero-length IOMMU mapping"),
            DomainError::NoPermissions => f.write_str("IOMMU mapping with neither read nor write permission"),
            DomainError::BadRange => f.write_str("physical range wraps around the address space"),
            DomainError::NotMapped { iova } => {
                write!(f, "IOVA {iova:#x} is not mapped in this domain (double unmap, or a wrong address)")
            }
            DomainError::LengthMismatch { iova, mapped, asked } => write!(
                f,
                "unmap of IOVA {iova:#x} with {asked:#x} bytes, but it was mapped with {mapped:#x}; unmap what was mapped"
            ),
            DomainError::AlreadyAttached { source, domain } => {
                write!(f, "{source} is already attached to IOMMU domain {domain}; detach it first")
            }
            DomainError::NotAttached { source } => write!(f, "{source} is not attached to this IOMMU domain"),
        }
    }
}

/// What the DMA service is told when a domain refuses a request: the same cases, in
/// `dma`'s own error type (which cannot name this crate's).
impl From<DomainError> for IommuError {
    fn from(e: DomainError) -> IommuError {
        match e {
            DomainError::Iova(e) => match e {
                IovaError::ZeroLength => IommuError::ZeroLength,
                IovaError::NoSpace { len, limit } => IommuError::IovaExhausted { len, limit },
                IovaError::Overlaps { iova } => IommuError::IovaInUse { iova },
                IovaError::BadRange { iova } => IommuError::BadIovaRange { iova, len: 0 },
                IovaError::NotAllocated { iova } => IommuError::NotMapped { iova },
            },
            DomainError::Table(e) => match e {
                TableError::OutOfMemory => IommuError::TableAllocFailed,
                TableError::Unaligned { iova, len } => IommuError::BadIovaRange { iova, len },
                TableError::PhysUnaligned { phys } | TableError::PhysTooHigh { phys } => {
                    IommuError::BadPhysAddr { phys }
                }
                TableError::BeyondWidth { iova, width } => IommuError::BeyondWidth { iova, width },
                TableError::AlreadyMapped { iova } => IommuError::AlreadyMapped { iova },
                TableError::SplitsLargePage { iova } => IommuError::SplitsLargePage { iova },
            },
            DomainError::Invalidation(_) => IommuError::InvalidationFailed,
            DomainError::ZeroLength => IommuError::ZeroLength,
            DomainError::NoPermissions => IommuError::NoPermissions,
            DomainError::BadRange => IommuError::PhysRangeWraps,
            DomainError::NotMapped { iova } => IommuError::NotMapped { iova },
            DomainError::LengthMismatch { iova, mapped, asked } => IommuError::LengthMismatch { iova, mapped, asked },
            DomainError::AlreadyAttached { source, domain } => {
                IommuError::DeviceAlreadyAttached { requester: source.0, domain }
            }
            DomainError::NotAttached { source } => IommuError::DeviceNotAttached { requester: source.0 },
        }
    }
}

impl From<IovaError> for DomainError {
    fn from(e: IovaError) -> DomainError {
        DomainError::Iova(e)
    }
}

impl From<TableError> for DomainError {
    fn from(e: TableError) -> DomainError {
        DomainError::Table(e)
    }
}

impl From<InvalidationError> for DomainError {
    fn from(e: InvalidationError) -> DomainError {
        DomainError::Invalidation(e)
    }
}
