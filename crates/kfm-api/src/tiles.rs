//! Vector tiles of a view: the features one class of caller may see,
//! drawn into one tile (`kfm-tiles` in memory, `ST_AsMVT` on PostGIS).
//!
//! Tiles are drawn from the *view*, never from a release's layers: a view
//! is already shaped by the decision (a caller not approved for a
//! restricted dataset has a view over its generalised layer only), so a
//! tile cannot hold what the caller's items would not.
//!
//! Each view keeps the tiles it drew. A view belongs to one release, so
//! the cache is keyed by the release (its version and manifest digest) and
//! the decision's class (the shape) without saying so: when a pointer
//! moves, requests go to the new release's views at once, and the old
//! release's tiles leave with it. A stale tile cannot be served.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use kfm_tiles::{BUFFER, Draw, EXTENT, ID_KEY, LayerBuilder, TileId};

use crate::view::{MemView, ReadError, View, ViewData, feature_id};

/// Tile bytes kept per view before the cache starts over.
const TILE_BYTES_PER_VIEW: usize = 64 << 20;

/// Tiles already drawn from one view. Bounded by bytes: cleared when
/// full, so a crawler walking every tile cannot grow it.
#[derive(Default)]
pub struct TileCache(Mutex<(HashMap<TileId, Bytes>, usize)>);

impl TileCache {
    pub fn get(&self, t: &TileId) -> Option<Bytes> {
        self.0.lock().ok()?.0.get(t).cloned()
    }

    pub fn put(&self, t: TileId, tile: Bytes) {
        if let Ok(mut g) = self.0.lock() {
            let (m, size) = &mut *g;
            if *size + tile.len() > TILE_BYTES_PER_VIEW {
                m.clear();
                *size = 0;
            }
            *size += tile.len();
            if let Some(old) = m.insert(t, tile) {
                *size -= old.len();
            }
        }
    }
}

impl MemView {
    /// Draws tile `t` from the features in memory.
    fn draw(&self, name: &str, t: TileId) -> Result<Vec<u8>, ReadError> {
        let [w, s, e, n] = t.bounds_lonlat_buffered();
        let geoms = self.geoms();
        let mut layer = LayerBuilder::new(name, t);
        for (i, bb) in self.bboxes.iter().enumerate() {
            let Some(bb) = bb else { continue };
            if bb[2] < w || bb[0] > e || bb[3] < s || bb[1] > n {
                continue;
            }
            let Some(g) = geoms.get(i).and_then(Option::as_ref) else {
                continue;
            };
            let id = feature_id(&self.features[i]);
            layer
                .add(&Draw {
                    ord: i as u64,
                    id: id.as_deref(),
                    geometry: g,
                    properties: self.features[i].properties.as_ref(),
                })
                .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        }
        Ok(layer.finish())
    }
}

impl View {
    /// Tile `t` of this view as one MVT layer named `name`, from the cache
    /// when it was drawn before.
    pub async fn tile(&self, name: &str, t: TileId) -> Result<Bytes, ReadError> {
        if let Some(b) = self.tiles.get(&t) {
            return Ok(b);
        }
        let bytes = Bytes::from(match &self.data {
            ViewData::Memory(m) => m.draw(name, t)?,
            // Invariant: the table a PostGIS view reads is the one its
            // shape allows (the generalised derivative, built under the
            // plan the policy asks for now, for a caller not approved), so
            // the database draws exactly what the view serves.
            ViewData::Postgis(p) => p
                .reader
                .tile(
                    &p.layer,
                    &p.shape.redact,
                    name,
                    ID_KEY,
                    (t.z, t.x, t.y),
                    EXTENT,
                    BUFFER,
                )
                .await
                .map_err(crate::view::unavailable)?,
            ViewData::Empty => Vec::new(),
        });
        self.tiles.put(t, bytes.clone());
        Ok(bytes)
    }
}
