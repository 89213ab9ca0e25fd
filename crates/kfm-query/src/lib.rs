//! The query language of KFM's feature routes, shared by both serving
//! backends.
//!
//! `kfm serve` answers `items` from memory (the embedded default) or from
//! PostgreSQL/PostGIS (`[serve] backend = "postgis"`), and both must give
//! the same bytes for the same request. So everything a request can ask
//! (a CQL2 `filter`, `datetime`, `bbox`, `sortby`, `q`, property filters
//! and the keyset `cursor` of a `next` link) is parsed once, here, into a
//! typed form that has two readings with one meaning:
//!
//! - [`Filter::eval`] and friends evaluate it against a feature in memory,
//!   with SQL's three-valued logic;
//! - [`Filter::to_sql`] compiles it to a parameterised SQL fragment: every
//!   value, property name and geometry travels as a bound parameter, and
//!   the only text is fixed by this crate.
//!
//! Types come from the data: a collection's [`Queryables`] say which
//! properties exist and what kind of value each holds, and a comparison
//! that does not fit them (an unknown property, a string compared with a
//! number, a function this crate does not know) is an error naming it,
//! never a silently empty answer.

pub mod crs;
pub mod filter;
pub mod queryables;
pub mod sort;
pub mod sql;
pub mod terms;
pub mod time;

mod compile;
mod eval;
pub mod like;
pub mod normal;

pub use crs::Crs;
pub use filter::{Bbox, Filter, FilterLang, Subject};
pub use queryables::{Kind, Observer, Queryables};
pub use sort::{Cursor, SortKey, SortKeys};
pub use sql::{Param, Sql};
pub use terms::Search;
pub use time::{Interval, Micros};

/// A request the query language cannot take: which parameter, and why, in
/// words a client can act on. Never carries data, only what the client
/// sent (shortened) and what this collection offers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct QueryError {
    /// The query parameter at fault (`filter`, `sortby`, `cursor`, ...).
    pub param: &'static str,
    pub message: String,
}

impl QueryError {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
            message: message.into(),
        }
    }
}

/// At most this many characters of what a client sent are quoted back.
pub(crate) fn quote(s: &str) -> String {
    let short: String = s.chars().take(60).collect();
    format!("{short:?}")
}
