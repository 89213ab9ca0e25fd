//! Gate A's processing, streamed: a source of any size is promoted in
//! memory that grows only by what the spatial index needs per feature.
//!
//! Passes over the raw object (a local file), each holding one feature at
//! a time:
//! 1. [`survey`]: the raw bytes re-hashed; normalisation checked (problems
//!    located); the feature count, extent, QA measures, the FlatGeobuf
//!    schema (columns and geometry type) and duplicate ids.
//! 2. [`write`]: the normalised GeoJSON and its FlatGeobuf (and, for a
//!    sensitive dataset, the generalised pair in a pass of its own, so two
//!    indexes are never in memory together), each hashed as it is written.
//!    Run once to files, and once more to digests only: the determinism
//!    check compares the two.
//!
//! Memory per feature: the FlatGeobuf writer's 48-byte item (plus ~3 bytes
//! of inner index nodes); during the survey of a GeoJSON source, 24 bytes
//! to find duplicate ids. Nothing else grows with the data.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use geojson::Feature;
use kfm_core::{DatasetSpec, Digest, Hasher};

use crate::fgb::{FgbStream, Schema};
use crate::generalize::{Plan, generalize_one};
use crate::normalize::{StreamError, for_each_feature, geometry_bbox};
use crate::qa::{Measure, QaReport};

/// Reads through, hashing every byte.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Writes through, hashing every byte.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
            size: 0,
        }
    }

    /// Flushes, and returns the digest and length of what was written.
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        self.inner.flush()?;
        Ok((self.hasher.finish(), self.size))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What the survey found: everything gates A–E decide on, without the
/// features themselves.
pub struct Survey {
    pub raw_digest: Digest,
    pub raw_size: u64,
    pub count: usize,
    pub bbox: Option<[f64; 4]>,
    pub qa: QaReport,
    pub schema: Schema,
    /// The generalised derivative's schema (sensitive datasets).
    pub generalized_schema: Option<Schema>,
}

fn open(raw: &Path) -> Result<std::fs::File, Vec<String>> {
    std::fs::File::open(raw).map_err(|e| vec![format!("cannot read {}: {e}", raw.display())])
}

/// Pass 1: hashes the raw bytes and surveys the normalised features
/// (`plan`: the generalisation plan of a sensitive dataset). `Err`: the
/// problems that stop normalisation, each located.
pub fn survey(spec: &DatasetSpec, raw: &Path, plan: Option<&Plan>) -> Result<Survey, Vec<String>> {
    let mut reader = HashingReader {
        inner: open(raw)?,
        hasher: Hasher::new(),
        size: 0,
    };
    let mut count = 0usize;
    let mut bbox: Option<[f64; 4]> = None;
    let mut measure = Measure::new(&spec.qa);
    let mut schema = Schema::default();
    let mut gschema = plan.map(|_| Schema::default());
    let describe = plan.map(Plan::describe);
    let streamed = for_each_feature(spec, &mut reader, |i, f| {
        count += 1;
        if let Some(b) = f.geometry.as_ref().and_then(|g| geometry_bbox(&g.value)) {
            bbox = Some(match bbox {
                None => b,
                Some([w, s, e, n]) => [w.min(b[0]), s.min(b[1]), e.max(b[2]), n.max(b[3])],
            });
        }
        measure.feature(i, &f);
        schema.add(&f);
        if let (Some(gs), Some(plan), Some(d)) = (gschema.as_mut(), plan, describe.as_deref()) {
            gs.add(&generalize_one(&f, plan, d));
        }
        Ok(())
    });
    match streamed {
        Ok(()) => {}
        Err(StreamError::Invalid(e)) => return Err(e.problems),
        Err(StreamError::Sink(e)) => return Err(vec![e]),
    }
    // The digest covers every byte, whatever normalisation needed to read.
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| vec![format!("cannot read {}: {e}", raw.display())])?;
    Ok(Survey {
        raw_digest: reader.hasher.finish(),
        raw_size: reader.size,
        count,
        bbox,
        qa: measure.report(),
        schema,
        generalized_schema: gschema,
    })
}

/// One artifact: its digest and size, and where it was written (`None`
/// when only its digest was computed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub path: Option<PathBuf>,
    pub digest: Digest,
    pub size: u64,
}

/// The artifacts of one processing run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub geojson: Output,
    pub fgb: Output,
    pub generalized: Option<(Output, Output)>,
}

impl Artifacts {
    pub fn digests(&self) -> Vec<Digest> {
        let mut d = vec![self.geojson.digest, self.fgb.digest];
        if let Some((g, f)) = &self.generalized {
            d.push(g.digest);
            d.push(f.digest);
        }
        d
    }
}

/// Where [`write`] puts what it makes.
#[derive(Clone, Copy)]
pub enum Dest<'a> {
    /// Files in this directory: `features.geojson`, `features.fgb`,
    /// `generalized.geojson`, `generalized.fgb`.
    Files(&'a Path),
    /// Digests only (the determinism check).
    Digests,
}

/// Pass 2 (and 3): the artifacts of a surveyed source. `scratch` holds
/// the FlatGeobuf writer's temporary file. The same input always gives the
/// same bytes: the determinism check runs this twice.
pub fn write(
    spec: &DatasetSpec,
    raw: &Path,
    survey: &Survey,
    plan: Option<&Plan>,
    dest: Dest<'_>,
    scratch: &Path,
) -> Result<Artifacts, String> {
    let name = spec.id.as_str();
    let (geojson, fgb) = one_layer(
        spec,
        raw,
        name,
        &survey.schema,
        survey.count,
        None,
        dest,
        scratch,
        "features",
    )?;
    let generalized = match (plan, &survey.generalized_schema) {
        (Some(plan), Some(gs)) => Some(one_layer(
            spec,
            raw,
            name,
            gs,
            survey.count,
            Some(plan),
            dest,
            scratch,
            "generalized",
        )?),
        _ => None,
    };
    Ok(Artifacts {
        geojson,
        fgb,
        generalized,
    })
}

/// Opens the sink of one artifact: a file in `dest`, or nothing.
fn sink(dest: Dest<'_>, file: &str) -> Result<(Box<dyn Write>, Option<PathBuf>), String> {
    match dest {
        Dest::Digests => Ok((Box::new(std::io::sink()), None)),
        Dest::Files(dir) => {
            let p = dir.join(file);
            let f = std::fs::File::create(&p)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            Ok((Box::new(BufWriter::with_capacity(1 << 20, f)), Some(p)))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn one_layer(
    spec: &DatasetSpec,
    raw: &Path,
    name: &str,
    schema: &Schema,
    count: usize,
    plan: Option<&Plan>,
    dest: Dest<'_>,
    scratch: &Path,
    stem: &str,
) -> Result<(Output, Output), String> {
    let io = |what: &str, e: &dyn std::fmt::Display| format!("{stem}.{what}: {e}");
    let (gj, gj_path) = sink(dest, &format!("{stem}.geojson"))?;
    let mut gj = HashingWriter::new(gj);
    gj.write_all(br#"{"type":"FeatureCollection","features":["#)
        .map_err(|e| io("geojson", &e))?;
    let mut fgb = FgbStream::new(name, schema, scratch, count).map_err(|e| e.to_string())?;
    let describe = plan.map(Plan::describe);
    let mut first = true;
    let mut emit = |f: &Feature| -> Result<(), String> {
        if !first {
            gj.write_all(b",").map_err(|e| io("geojson", &e))?;
        }
        first = false;
        serde_json::to_writer(&mut gj, f).map_err(|e| io("geojson", &e))?;
        fgb.add(f).map_err(|e| e.to_string())
    };
    let file =
        std::fs::File::open(raw).map_err(|e| format!("cannot read {}: {e}", raw.display()))?;
    let streamed = for_each_feature(spec, file, |_, f| match (plan, describe.as_deref()) {
        (Some(p), Some(d)) => emit(&generalize_one(&f, p, d)),
        _ => emit(&f),
    });
    match streamed {
        Ok(()) => {}
        // The survey normalised this very source: refusing now means the
        // bytes or the code changed underfoot.
        Err(StreamError::Invalid(e)) => {
            return Err(format!(
                "the source no longer normalises: {}",
                e.problems.join("; ")
            ));
        }
        Err(StreamError::Sink(e)) => return Err(e),
    }
    gj.write_all(b"]}\n").map_err(|e| io("geojson", &e))?;
    let (gd, gs) = gj.finish().map_err(|e| io("geojson", &e))?;
    let (fw, fgb_path) = sink(dest, &format!("{stem}.fgb"))?;
    let mut fw = HashingWriter::new(fw);
    fgb.finish(&mut fw).map_err(|e| e.to_string())?;
    let (fd, fs) = fw.finish().map_err(|e| io("fgb", &e))?;
    Ok((
        Output {
            path: gj_path,
            digest: gd,
            size: gs,
        },
        Output {
            path: fgb_path,
            digest: fd,
            size: fs,
        },
    ))
}
