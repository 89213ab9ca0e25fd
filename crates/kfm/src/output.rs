//! Printing data as JSON or for people.

use serde::Serialize;

use crate::failure::Failure;

pub fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::input(format!("cannot serialise output: {e}")))?;
    println!("{s}");
    Ok(())
}

/// `1.2 MiB`-style sizes for people.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
