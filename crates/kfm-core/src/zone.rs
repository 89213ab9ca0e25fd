//! The store's zones along the truth path and what each allows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A zone of the canonical store. The key prefix of every object is its zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    /// Immutable acquisitions, exactly the bytes received, content-addressed.
    Raw,
    /// Intermediates and QA: scratch, rewritable.
    Work,
    /// Runs that failed a gate, with their report. Written once per run.
    Quarantine,
    /// Publishable artifacts, immutable per version.
    Processed,
    /// DCAT + STAC + PROV + receipts, immutable per version.
    Catalog,
    /// Release pointers, changed only by compare-and-swap.
    Published,
    /// The audit ledger.
    Audit,
}

/// How objects in a zone may change after they are first written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutability {
    /// Created once, never overwritten, never deleted.
    WriteOnce,
    /// Replaced only by compare-and-swap against the version last read.
    CompareAndSwap,
    /// Free to overwrite and delete.
    Rewritable,
    /// Owned by the ledger, which enforces append-only itself.
    AppendOnly,
}

impl Zone {
    pub const ALL: [Zone; 7] = [
        Zone::Raw,
        Zone::Work,
        Zone::Quarantine,
        Zone::Processed,
        Zone::Catalog,
        Zone::Published,
        Zone::Audit,
    ];

    /// The key prefix (without trailing slash).
    pub fn prefix(self) -> &'static str {
        match self {
            Zone::Raw => "raw",
            Zone::Work => "work",
            Zone::Quarantine => "quarantine",
            Zone::Processed => "processed",
            Zone::Catalog => "catalog",
            Zone::Published => "published",
            Zone::Audit => "audit",
        }
    }

    pub fn mutability(self) -> Mutability {
        match self {
            Zone::Raw | Zone::Processed | Zone::Catalog | Zone::Quarantine => Mutability::WriteOnce,
            Zone::Published => Mutability::CompareAndSwap,
            Zone::Work => Mutability::Rewritable,
            Zone::Audit => Mutability::AppendOnly,
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}
