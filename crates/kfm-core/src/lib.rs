//! KFM's vocabulary and formats.
//!
//! Everything here is pure: parsing, validation and serialisation of the
//! things the rest of KFM talks about (ids, digests, zones, labels, dataset
//! specs, configuration, records). No file, network or clock access happens
//! in this crate, so every rule in it can be tested exhaustively and reused
//! by any other crate without dragging I/O along.

pub mod acquisition;
#[macro_use]
mod validated;
pub mod canonical;
pub mod config;
pub mod digest;
pub mod dsse;
pub mod environment;
pub mod ids;
pub mod label;
pub mod license;
pub mod pins;
pub mod secret;
pub mod spec;
pub mod zone;

pub use acquisition::{ACQUISITION_KIND, Acquisition, Tool};
pub use canonical::to_canonical_json;
pub use config::{
    Config, ConfigError, Environment, EnvironmentPins, PostgresConfig, SecretRef, ServeBackend,
    StoreUrl,
};
pub use digest::{Digest, DigestParseError, Hasher};
pub use dsse::{DsseError, Envelope, Signer};
pub use ids::{DatasetId, DatasetIdError};
pub use label::PolicyLabel;
pub use license::LicenseId;
pub use spec::{DatasetSpec, SourceFormat, SourceLocation, SpecError};
pub use zone::{Mutability, Zone};
