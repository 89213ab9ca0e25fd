//! The spatially indexed form of a processed dataset: FlatGeobuf with its
//! packed Hilbert R-tree, written feature by feature.
//!
//! Why a writer of our own: a dataset of tens of millions of features must
//! be promoted in bounded memory. The `flatgeobuf` crate's writer keeps
//! about 140 bytes per feature at once when it writes its index (its node
//! list, an offset list, a copy of the nodes and the whole tree). Here each
//! feature costs one 48-byte item (its bounding box, where it lies in a
//! temporary file, its size, its Hilbert key), sorted in place, plus the
//! tree's inner levels (about 1/15 of a node per feature); the leaves are
//! written straight from the items. The encoding is the crate's generated
//! FlatBuffers types, so the file is what every FlatGeobuf reader expects
//! (the crate's own reader checks it in the tests).
//!
//! Columns are declared up front from every feature's properties (sorted by
//! name, typed by what the values hold: [`Schema`], built in a first pass)
//! so the file does not depend on which feature happened to come first, and
//! the feature id travels in a `kfm_id` column so a bbox hit maps back to
//! the GeoJSON feature.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use flatbuffers::FlatBufferBuilder;
use flatgeobuf::{
    Column, ColumnArgs, ColumnType, Crs, CrsArgs, Feature as FbFeature, FeatureArgs,
    Geometry as FbGeometry, GeometryArgs, GeometryType, Header, HeaderArgs,
};
use geojson::{Feature, GeometryValue, JsonValue};

use crate::normalize::id_string;

/// The column holding each feature's id.
pub const ID_COLUMN: &str = "kfm_id";

/// The one JSON column of a dataset with more property names than
/// FlatGeobuf can declare as columns.
pub const WIDE_COLUMN: &str = "properties";

/// Columns FlatGeobuf can declare, ours (`kfm_id`) included.
const MAX_COLUMNS: usize = u16::MAX as usize;

/// FlatGeobuf's magic bytes (version 3).
const MAGIC: [u8; 8] = [0x66, 0x67, 0x62, 0x03, 0x66, 0x67, 0x62, 0x00];

/// Children per node of the packed R-tree (FlatGeobuf's default).
const NODE_SIZE: u64 = 16;

#[derive(Debug, thiserror::Error)]
#[error("cannot write FlatGeobuf: {0}")]
pub struct FgbError(String);

impl From<std::io::Error> for FgbError {
    fn from(e: std::io::Error) -> Self {
        FgbError(e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Long,
    Double,
    String,
    Json,
}

fn kind_of(v: &JsonValue) -> Option<Kind> {
    match v {
        JsonValue::Null => None,
        JsonValue::Bool(_) => Some(Kind::Bool),
        JsonValue::Number(n) if n.is_i64() => Some(Kind::Long),
        JsonValue::Number(_) => Some(Kind::Double),
        JsonValue::String(_) => Some(Kind::String),
        JsonValue::Array(_) | JsonValue::Object(_) => Some(Kind::Json),
    }
}

fn merge(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (x, y) if x == y => x,
        (Kind::Long, Kind::Double) | (Kind::Double, Kind::Long) => Kind::Double,
        _ => Kind::Json,
    }
}

/// What the file declares: its columns and its geometry type. Built one
/// feature at a time ([`Schema::add`]); memory grows with the number of
/// distinct property names, never with the number of features.
#[derive(Debug, Default, Clone)]
pub struct Schema {
    columns: BTreeMap<String, Option<Kind>>,
    /// The geometry types met (FlatGeobuf numbering).
    types: std::collections::BTreeSet<u8>,
}

fn geometry_type(g: &GeometryValue) -> GeometryType {
    match g {
        GeometryValue::Point { .. } => GeometryType::Point,
        GeometryValue::MultiPoint { .. } => GeometryType::MultiPoint,
        GeometryValue::LineString { .. } => GeometryType::LineString,
        GeometryValue::MultiLineString { .. } => GeometryType::MultiLineString,
        GeometryValue::Polygon { .. } => GeometryType::Polygon,
        GeometryValue::MultiPolygon { .. } => GeometryType::MultiPolygon,
        GeometryValue::GeometryCollection { .. } => GeometryType::GeometryCollection,
    }
}

impl Schema {
    pub fn add(&mut self, f: &Feature) {
        for (k, v) in f.properties.iter().flatten() {
            if !self.columns.contains_key(k) {
                self.columns.insert(k.clone(), None);
            }
            if let (Some(slot), Some(kind)) = (self.columns.get_mut(k), kind_of(v)) {
                *slot = Some(slot.map_or(kind, |s| merge(s, kind)));
            }
        }
        if let Some(g) = &f.geometry {
            self.types.insert(geometry_type(&g.value).0);
        }
    }

    fn columns(&self) -> Vec<(&str, Kind)> {
        if self.wide() {
            return vec![(WIDE_COLUMN, Kind::Json)];
        }
        self.columns
            .iter()
            .filter(|(k, _)| k.as_str() != ID_COLUMN)
            .map(|(k, v)| (k.as_str(), v.unwrap_or(Kind::String)))
            .collect()
    }

    /// More property names than FlatGeobuf has columns (its column index
    /// is 16 bits): the properties then travel as one JSON column.
    fn wide(&self) -> bool {
        self.columns.len() >= MAX_COLUMNS
    }

    /// The dataset's geometry type: the one type there is, a Multi type
    /// when single and multi geometries of one kind mix (the single ones
    /// are written as one-part multis), else Unknown (each feature then
    /// carries its own type).
    fn dataset_type(&self) -> GeometryType {
        let t: Vec<GeometryType> = self.types.iter().map(|&t| GeometryType(t)).collect();
        match t.as_slice() {
            [one] => *one,
            [GeometryType::Point, GeometryType::MultiPoint] => GeometryType::MultiPoint,
            [GeometryType::LineString, GeometryType::MultiLineString] => {
                GeometryType::MultiLineString
            }
            [GeometryType::Polygon, GeometryType::MultiPolygon] => GeometryType::MultiPolygon,
            _ => GeometryType::Unknown,
        }
    }
}

/// Where one feature lies in the temporary file, and its index key.
#[derive(Clone, Copy)]
struct Item {
    min_x: f64,
    min_y: f64,
    max_x: f64,
    max_y: f64,
    /// Byte offset in the temporary file.
    offset: u64,
    size: u32,
    /// Hilbert index of the box's centre (set before sorting).
    key: u32,
}

/// A FlatGeobuf file being written: features go to a temporary file as they
/// come, then [`FgbStream::finish`] writes header, index and the features
/// in index order.
pub struct FgbStream<'s> {
    name: String,
    /// All properties as one JSON column (see [`Schema::wide`]).
    wide: bool,
    columns: Vec<(&'s str, Kind)>,
    /// Column number by name.
    index: std::collections::HashMap<&'s str, u16>,
    dataset_type: GeometryType,
    tmp: BufWriter<std::fs::File>,
    written: u64,
    items: Vec<Item>,
    fbb: FlatBufferBuilder<'static>,
    props: Vec<u8>,
}

impl<'s> FgbStream<'s> {
    /// A writer for features of `schema`, keeping their encodings in a
    /// temporary file in `scratch`; `capacity`: how many features will come
    /// (the item list is sized once, never regrown).
    pub fn new(
        name: &str,
        schema: &'s Schema,
        scratch: &std::path::Path,
        capacity: usize,
    ) -> Result<Self, FgbError> {
        let columns = schema.columns();
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, (i + 1) as u16))
            .collect();
        Ok(Self {
            name: name.to_owned(),
            wide: schema.wide(),
            dataset_type: schema.dataset_type(),
            columns,
            index,
            tmp: BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(scratch)?),
            written: 0,
            items: Vec::with_capacity(capacity),
            fbb: FlatBufferBuilder::new(),
            props: Vec::new(),
        })
    }

    /// Adds a feature. One without a geometry is left out (FlatGeobuf has
    /// no null geometry; the GeoJSON artifact keeps it).
    pub fn add(&mut self, f: &Feature) -> Result<(), FgbError> {
        let Some(g) = &f.geometry else {
            return Ok(());
        };
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        crate::normalize::for_each_position(&g.value, &mut |p| {
            bbox[0] = bbox[0].min(p[0]);
            bbox[1] = bbox[1].min(p[1]);
            bbox[2] = bbox[2].max(p[0]);
            bbox[3] = bbox[3].max(p[1]);
        });
        if !bbox[0].is_finite() {
            // An empty geometry (no position): nothing to index.
            return Ok(());
        }
        self.encode_properties(f)?;
        self.fbb.reset();
        let geometry = encode_geometry(&mut self.fbb, &g.value, self.dataset_type, true);
        let properties = Some(self.fbb.create_vector(&self.props));
        let feature = FbFeature::create(
            &mut self.fbb,
            &FeatureArgs {
                geometry: Some(geometry),
                properties,
                ..Default::default()
            },
        );
        self.fbb.finish_size_prefixed(feature, None);
        let bytes = self.fbb.finished_data();
        self.tmp.write_all(bytes)?;
        let size =
            u32::try_from(bytes.len()).map_err(|_| FgbError("a feature over 4 GiB".into()))?;
        self.items.push(Item {
            min_x: bbox[0],
            min_y: bbox[1],
            max_x: bbox[2],
            max_y: bbox[3],
            offset: self.written,
            size,
            key: 0,
        });
        self.written += u64::from(size);
        Ok(())
    }

    fn encode_properties(&mut self, f: &Feature) -> Result<(), FgbError> {
        let p = &mut self.props;
        p.clear();
        let id = f.id.as_ref().map(id_string).unwrap_or_default();
        p.extend_from_slice(&0u16.to_le_bytes());
        put_text(p, &id);
        if self.wide {
            if let Some(props) = &f.properties {
                let json = serde_json::to_string(props).map_err(|e| FgbError(e.to_string()))?;
                p.extend_from_slice(&1u16.to_le_bytes());
                put_text(p, &json);
            }
            return Ok(());
        }
        // Column order, so the bytes do not depend on the source's order.
        let mut present: Vec<(u16, &JsonValue)> = f
            .properties
            .iter()
            .flatten()
            .filter_map(|(k, v)| self.index.get(k.as_str()).map(|&i| (i, v)))
            .collect();
        present.sort_unstable_by_key(|(i, _)| *i);
        for (i, v) in present {
            let kind = self.columns[usize::from(i) - 1].1;
            let mut json = String::new();
            let start = p.len();
            p.extend_from_slice(&i.to_le_bytes());
            match (kind, v) {
                (_, JsonValue::Null) => p.truncate(start),
                (Kind::Bool, JsonValue::Bool(b)) => p.push(u8::from(*b)),
                (Kind::Long, JsonValue::Number(n)) => match n.as_i64() {
                    Some(x) => p.extend_from_slice(&x.to_le_bytes()),
                    None => p.truncate(start),
                },
                (Kind::Double, JsonValue::Number(n)) => match n.as_f64() {
                    Some(x) => p.extend_from_slice(&x.to_le_bytes()),
                    None => p.truncate(start),
                },
                (Kind::String, JsonValue::String(s)) => put_text(p, s),
                (_, other) => {
                    json = other.to_string();
                    put_text(p, &json);
                }
            }
            drop(json);
        }
        Ok(())
    }

    /// Writes the whole file to `out`: header, index (root level first,
    /// leaves last), then the features in index order.
    pub fn finish(mut self, mut out: impl Write) -> Result<(), FgbError> {
        let mut file = self.tmp.into_inner().map_err(|e| FgbError(e.to_string()))?;
        let items = &mut self.items;
        let mut extent = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for it in items.iter() {
            extent[0] = extent[0].min(it.min_x);
            extent[1] = extent[1].min(it.min_y);
            extent[2] = extent[2].max(it.max_x);
            extent[3] = extent[3].max(it.max_y);
        }
        let (w, h) = (extent[2] - extent[0], extent[3] - extent[1]);
        let scale = |v: f64, min: f64, span: f64| -> u32 {
            if span > 0.0 {
                (f64::from(u16::MAX) * (v - min) / span).floor() as u32
            } else {
                0
            }
        };
        for it in items.iter_mut() {
            let x = scale((it.min_x + it.max_x) / 2.0, extent[0], w);
            let y = scale((it.min_y + it.max_y) / 2.0, extent[1], h);
            it.key = hilbert(x, y);
        }
        // Descending Hilbert order, as FlatGeobuf writers sort; ties by
        // arrival, so the file is a function of its input. In place.
        items.sort_unstable_by(|a, b| b.key.cmp(&a.key).then(a.offset.cmp(&b.offset)));

        // Header.
        let mut fbb = FlatBufferBuilder::new();
        let columns: Vec<_> = std::iter::once((ID_COLUMN, Kind::String, false))
            .chain(self.columns.iter().map(|(n, k)| (*n, *k, true)))
            .map(|(name, kind, nullable)| {
                let name = fbb.create_string(name);
                Column::create(
                    &mut fbb,
                    &ColumnArgs {
                        name: Some(name),
                        type_: match kind {
                            Kind::Bool => ColumnType::Bool,
                            Kind::Long => ColumnType::Long,
                            Kind::Double => ColumnType::Double,
                            Kind::String => ColumnType::String,
                            Kind::Json => ColumnType::Json,
                        },
                        nullable,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let columns = fbb.create_vector(&columns);
        let name = fbb.create_string(&self.name);
        let crs = Crs::create(
            &mut fbb,
            &CrsArgs {
                code: 4326,
                ..Default::default()
            },
        );
        let n = items.len() as u64;
        let envelope = (n > 0).then(|| fbb.create_vector(&extent));
        let header = Header::create(
            &mut fbb,
            &HeaderArgs {
                name: Some(name),
                envelope,
                geometry_type: self.dataset_type,
                columns: Some(columns),
                features_count: n,
                index_node_size: NODE_SIZE as u16,
                crs: Some(crs),
                ..Default::default()
            },
        );
        fbb.finish_size_prefixed(header, None);
        out.write_all(&MAGIC)?;
        out.write_all(fbb.finished_data())?;

        if n > 0 {
            write_index(items, &mut out)?;
        }

        // Features, in index order, from the temporary file.
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut buf = Vec::new();
        let mut at = 0u64;
        for it in items.iter() {
            if it.offset != at {
                reader.seek(SeekFrom::Start(it.offset))?;
            }
            buf.resize(it.size as usize, 0);
            reader.read_exact(&mut buf)?;
            out.write_all(&buf)?;
            at = it.offset + u64::from(it.size);
        }
        out.flush()?;
        Ok(())
    }
}

fn put_text(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// One node of the index: a box and an offset (40 bytes, little endian).
fn put_node(out: &mut impl Write, b: [f64; 4], offset: u64) -> std::io::Result<()> {
    let mut n = [0u8; 40];
    for (i, v) in b.iter().enumerate() {
        n[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    n[32..].copy_from_slice(&offset.to_le_bytes());
    out.write_all(&n)
}

/// The packed R-tree over `items` (sorted): inner levels are built in
/// memory (about n/15 nodes), written root level first; then the leaves,
/// straight from the items, each with its feature's offset in the feature
/// section (where it will be written, in this order).
fn write_index(items: &[Item], out: &mut impl Write) -> std::io::Result<()> {
    let n = items.len() as u64;
    // Level sizes, leaves first.
    let mut sizes = vec![n];
    while let Some(&last) = sizes.last() {
        if last <= 1 {
            break;
        }
        sizes.push(last.div_ceil(NODE_SIZE));
    }
    let total: u64 = sizes.iter().sum();
    // Where each level starts in the node array (root first).
    let mut starts = vec![0u64; sizes.len()];
    let mut end = total;
    for (level, size) in sizes.iter().enumerate() {
        starts[level] = end - size;
        end -= size;
    }
    // Inner levels, bottom up: each node the union of its children and the
    // array index of its first child.
    let mut levels: Vec<Vec<([f64; 4], u64)>> = Vec::with_capacity(sizes.len());
    let leaf_box = |it: &Item| [it.min_x, it.min_y, it.max_x, it.max_y];
    for level in 1..sizes.len() {
        let children = sizes[level - 1];
        let mut nodes = Vec::with_capacity(sizes[level] as usize);
        let mut c = 0u64;
        while c < children {
            let mut b = [
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
            ];
            let first = starts[level - 1] + c;
            for k in c..(c + NODE_SIZE).min(children) {
                let cb = if level == 1 {
                    leaf_box(&items[k as usize])
                } else {
                    levels[level - 2][k as usize].0
                };
                b = [
                    b[0].min(cb[0]),
                    b[1].min(cb[1]),
                    b[2].max(cb[2]),
                    b[3].max(cb[3]),
                ];
            }
            nodes.push((b, first));
            c += NODE_SIZE;
        }
        levels.push(nodes);
    }
    for nodes in levels.iter().rev() {
        for (b, off) in nodes {
            put_node(out, *b, *off)?;
        }
    }
    let mut offset = 0u64;
    for it in items {
        put_node(out, leaf_box(it), offset)?;
        offset += u64::from(it.size);
    }
    Ok(())
}

/// A geometry as FlatGeobuf encodes it. `top`: the feature's own geometry
/// (its type is written when the dataset type does not say it, and a
/// single geometry becomes a one-part multi when the dataset is multi).
fn encode_geometry<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    g: &GeometryValue,
    dataset: GeometryType,
    top: bool,
) -> flatbuffers::WIPOffset<FbGeometry<'b>> {
    let own = geometry_type(g);
    // Written when the file's type does not tell it (Unknown, or inside a
    // collection).
    let type_ = if top && dataset == own {
        GeometryType::Unknown
    } else if top && dataset != GeometryType::Unknown {
        // A promoted single geometry: the multi type is the file's.
        GeometryType::Unknown
    } else {
        own
    };
    let flat = |fbb: &mut FlatBufferBuilder<'b>, lines: &[&[geojson::Position]], type_| {
        let mut xy = Vec::new();
        let mut ends = Vec::new();
        for l in lines {
            for p in *l {
                xy.push(p[0]);
                xy.push(p[1]);
            }
            ends.push((xy.len() / 2) as u32);
        }
        let xy = Some(fbb.create_vector(&xy));
        let ends = (ends.len() > 1).then(|| fbb.create_vector(&ends));
        FbGeometry::create(
            fbb,
            &GeometryArgs {
                xy,
                ends,
                type_,
                ..Default::default()
            },
        )
    };
    match g {
        GeometryValue::Point { coordinates } => {
            flat(fbb, &[std::slice::from_ref(coordinates)], type_)
        }
        GeometryValue::MultiPoint { coordinates } | GeometryValue::LineString { coordinates } => {
            flat(fbb, &[coordinates.as_slice()], type_)
        }
        GeometryValue::MultiLineString { coordinates } => {
            let lines: Vec<&[geojson::Position]> = coordinates.iter().map(Vec::as_slice).collect();
            flat(fbb, &lines, type_)
        }
        GeometryValue::Polygon { coordinates } => {
            let rings: Vec<&[geojson::Position]> = coordinates.iter().map(Vec::as_slice).collect();
            if top && dataset == GeometryType::MultiPolygon {
                // A polygon in a MultiPolygon file: one part.
                let part = flat(fbb, &rings, GeometryType::Unknown);
                let parts = fbb.create_vector(&[part]);
                FbGeometry::create(
                    fbb,
                    &GeometryArgs {
                        parts: Some(parts),
                        ..Default::default()
                    },
                )
            } else {
                flat(fbb, &rings, type_)
            }
        }
        GeometryValue::MultiPolygon { coordinates } => {
            let parts: Vec<_> = coordinates
                .iter()
                .map(|poly| {
                    let rings: Vec<&[geojson::Position]> = poly.iter().map(Vec::as_slice).collect();
                    flat(fbb, &rings, GeometryType::Unknown)
                })
                .collect();
            let parts = fbb.create_vector(&parts);
            FbGeometry::create(
                fbb,
                &GeometryArgs {
                    parts: Some(parts),
                    type_,
                    ..Default::default()
                },
            )
        }
        GeometryValue::GeometryCollection { geometries } => {
            let parts: Vec<_> = geometries
                .iter()
                .map(|m| encode_geometry(fbb, &m.value, dataset, false))
                .collect();
            let parts = fbb.create_vector(&parts);
            FbGeometry::create(
                fbb,
                &GeometryArgs {
                    parts: Some(parts),
                    type_,
                    ..Default::default()
                },
            )
        }
    }
}

/// The Hilbert index of a point on a 65536 x 65536 grid (the classic bit
/// interleaving of the Hilbert curve, as FlatGeobuf and Flatbush use).
fn hilbert(x: u32, y: u32) -> u32 {
    let mut a = x ^ y;
    let mut b = 0xFFFF ^ a;
    let mut c = 0xFFFF ^ (x | y);
    let mut d = x & (y ^ 0xFFFF);
    let mut aa = a | (b >> 1);
    let mut bb = (a >> 1) ^ a;
    let mut cc = ((c >> 1) ^ (b & (d >> 1))) ^ c;
    let mut dd = ((a & (c >> 1)) ^ (d >> 1)) ^ d;
    a = aa;
    b = bb;
    c = cc;
    d = dd;
    aa = (a & (a >> 2)) ^ (b & (b >> 2));
    bb = (a & (b >> 2)) ^ (b & ((a ^ b) >> 2));
    cc ^= (a & (c >> 2)) ^ (b & (d >> 2));
    dd ^= (b & (c >> 2)) ^ ((a ^ b) & (d >> 2));
    a = aa;
    b = bb;
    c = cc;
    d = dd;
    aa = (a & (a >> 4)) ^ (b & (b >> 4));
    bb = (a & (b >> 4)) ^ (b & ((a ^ b) >> 4));
    cc ^= (a & (c >> 4)) ^ (b & (d >> 4));
    dd ^= (b & (c >> 4)) ^ ((a ^ b) & (d >> 4));
    a = aa;
    b = bb;
    c = cc;
    d = dd;
    cc ^= (a & (c >> 8)) ^ (b & (d >> 8));
    dd ^= (b & (c >> 8)) ^ ((a ^ b) & (d >> 8));
    a = cc ^ (cc >> 1);
    b = dd ^ (dd >> 1);
    let mut i0 = x ^ y;
    let mut i1 = b | (0xFFFF ^ (i0 | a));
    i0 = (i0 | (i0 << 8)) & 0x00FF_00FF;
    i0 = (i0 | (i0 << 4)) & 0x0F0F_0F0F;
    i0 = (i0 | (i0 << 2)) & 0x3333_3333;
    i0 = (i0 | (i0 << 1)) & 0x5555_5555;
    i1 = (i1 | (i1 << 8)) & 0x00FF_00FF;
    i1 = (i1 | (i1 << 4)) & 0x0F0F_0F0F;
    i1 = (i1 | (i1 << 2)) & 0x3333_3333;
    i1 = (i1 | (i1 << 1)) & 0x5555_5555;
    (i1 << 1) | i0
}

/// Writes `features` as FlatGeobuf in memory (small inputs and tests;
/// promotion streams through [`FgbStream`]).
pub fn to_flatgeobuf(name: &str, features: &[Feature]) -> Result<Vec<u8>, FgbError> {
    let mut schema = Schema::default();
    features.iter().for_each(|f| schema.add(f));
    let dir = std::env::temp_dir();
    let mut w = FgbStream::new(name, &schema, &dir, features.len())?;
    for f in features {
        w.add(f)?;
    }
    let mut out = Vec::new();
    w.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatgeobuf::FallibleStreamingIterator;
    use flatgeobuf::geozero::{FeatureProperties, GeozeroGeometry, ToJson};

    fn fc(text: &str) -> Vec<Feature> {
        text.parse::<geojson::FeatureCollection>().unwrap().features
    }

    #[test]
    fn writes_a_readable_indexed_file_deterministically() {
        let features = fc(r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","id":1,"properties":{"name":"a","n":1},"geometry":{"type":"Point","coordinates":[-98,38]}},
            {"type":"Feature","id":2,"properties":{"name":"b","n":2.5},"geometry":{"type":"Point","coordinates":[-97,39]}},
            {"type":"Feature","id":3,"properties":{"name":null},"geometry":null}
        ]}"#);
        let a = to_flatgeobuf("t", &features).unwrap();
        let b = to_flatgeobuf("t", &features).unwrap();
        assert_eq!(a, b);
        let mut cursor = std::io::Cursor::new(&a);
        let reader = flatgeobuf::FgbReader::open(&mut cursor).unwrap();
        assert_eq!(reader.header().features_count(), 2);
        assert!(reader.header().index_node_size() > 0);
    }

    /// Every geometry kind, mixed and promoted, read back by the
    /// `flatgeobuf` crate's reader: the same geometries and properties,
    /// and a bbox search through the index finds exactly what it should.
    #[test]
    fn the_crate_reads_back_every_geometry_and_property_and_searches_the_index() {
        let mut features = Vec::new();
        let geoms = [
            r#"{"type":"Point","coordinates":[-98.5,38.25]}"#,
            r#"{"type":"MultiPoint","coordinates":[[1,2],[3,4]]}"#,
            r#"{"type":"LineString","coordinates":[[0,0],[1,1],[2,0]]}"#,
            r#"{"type":"MultiLineString","coordinates":[[[0,0],[1,1]],[[5,5],[6,6],[7,5]]]}"#,
            r#"{"type":"Polygon","coordinates":[[[0,0],[4,0],[4,4],[0,4],[0,0]],[[1,1],[2,1],[2,2],[1,1]]]}"#,
            r#"{"type":"MultiPolygon","coordinates":[[[[10,10],[11,10],[11,11],[10,10]]],[[[20,20],[21,20],[21,21],[20,20]]]]}"#,
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[30,30]},{"type":"LineString","coordinates":[[30,30],[31,31]]}]}"#,
        ];
        for i in 0..300 {
            let g = geoms[i % geoms.len()];
            features.extend(fc(&format!(
                r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","id":"f{i}","properties":{{"n":{i},"x":{x},"s":"v{i}","b":{b},"o":{{"k":[1,2]}},"z":null}},"geometry":{g}}}]}}"#,
                x = f64::from(i as u32) / 7.0,
                b = i.is_multiple_of(2)
            )));
        }
        let bytes = to_flatgeobuf("mixed", &features).unwrap();
        let mut cursor = std::io::Cursor::new(&bytes);
        let reader = flatgeobuf::FgbReader::open(&mut cursor).unwrap();
        assert_eq!(reader.header().geometry_type(), GeometryType::Unknown);
        let mut it = reader.select_all().unwrap();
        let mut seen = 0;
        while let Some(f) = it.next().unwrap() {
            let id = f.property::<String>(ID_COLUMN).unwrap();
            let i: usize = id[1..].parse().unwrap();
            assert_eq!(f.property::<i64>("n").unwrap(), i as i64);
            assert_eq!(f.property::<String>("s").unwrap(), format!("v{i}"));
            assert_eq!(f.property::<bool>("b").unwrap(), i.is_multiple_of(2));
            assert_eq!(f.property::<String>("o").unwrap(), r#"{"k":[1,2]}"#);
            let got: serde_json::Value = serde_json::from_str(&f.to_json().unwrap()).unwrap();
            let want: serde_json::Value = serde_json::from_str(geoms[i % geoms.len()]).unwrap();
            assert_eq!(got, want, "feature {i}");
            seen += 1;
        }
        assert_eq!(seen, 300);

        // A bbox search through the index.
        let mut cursor = std::io::Cursor::new(&bytes);
        let reader = flatgeobuf::FgbReader::open(&mut cursor).unwrap();
        let mut hits = reader.select_bbox(19.5, 19.5, 21.5, 21.5).unwrap();
        let mut ids = Vec::new();
        while let Some(f) = hits.next().unwrap() {
            ids.push(f.property::<String>(ID_COLUMN).unwrap());
        }
        ids.sort();
        let mut want: Vec<String> = (0..300)
            .filter(|i| i % 7 == 5)
            .map(|i| format!("f{i}"))
            .collect();
        want.sort();
        assert_eq!(ids, want);

        // Polygons and multipolygons only: promoted to MultiPolygon.
        let polys: Vec<Feature> = features
            .iter()
            .filter(|f| {
                matches!(
                    f.geometry.as_ref().map(|g| &g.value),
                    Some(GeometryValue::Polygon { .. } | GeometryValue::MultiPolygon { .. })
                )
            })
            .cloned()
            .collect();
        let bytes = to_flatgeobuf("polys", &polys).unwrap();
        let mut cursor = std::io::Cursor::new(&bytes);
        let reader = flatgeobuf::FgbReader::open(&mut cursor).unwrap();
        assert_eq!(reader.header().geometry_type(), GeometryType::MultiPolygon);
        let mut it = reader.select_all().unwrap();
        let mut n = 0;
        while let Some(f) = it.next().unwrap() {
            let mut json = Vec::new();
            f.process_geom(&mut flatgeobuf::geozero::geojson::GeoJsonWriter::new(
                &mut json,
            ))
            .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(v["type"], "MultiPolygon", "{v}");
            n += 1;
        }
        assert_eq!(n, polys.len());
    }
}
