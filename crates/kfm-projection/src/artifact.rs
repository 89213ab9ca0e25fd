//! Reading a published features artifact: a GeoJSON FeatureCollection
//! that normalisation wrote, streamed one feature at a time straight into
//! `geojson::Feature` (no intermediate JSON tree: this is the projector's
//! hot loop, and the artifact's bytes were checked against the signed
//! manifest's digest before it is read).

use std::fmt;
use std::io::Read;

use bytes::{Buf, Bytes};
use geojson::Feature;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Artifacts up to this size are read whole and parsed as a slice (several
/// times faster); larger ones are streamed, so that the projector's memory
/// does not grow with the size of what is published.
pub const WHOLE_MAX: u64 = 256 << 20;

/// The check of a streamed artifact's digest (see `Projector::open_artifact`).
pub(crate) type Check = tokio::task::JoinHandle<Result<(), crate::ProjectionError>>;

/// What was built from an artifact, kept only if its digest check passed.
/// The digest's verdict comes first (a damaged artifact may also fail to
/// parse); a reader that stopped only because the parser stopped first
/// leaves the parser's own error to be reported.
pub(crate) async fn checked<T>(
    check: Check,
    parsed: Result<T, crate::ProjectionError>,
) -> Result<T, crate::ProjectionError> {
    let verdict = check.await.map_err(|e| {
        crate::ProjectionError::Artifact(format!("the artifact's reader stopped: {e}"))
    })?;
    match (verdict, parsed) {
        (Ok(()), parsed) => parsed,
        (Err(crate::ProjectionError::Stopped), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

/// An artifact's bytes: whole, or chunks as they arrive from the store.
pub enum Body {
    Whole(Bytes),
    Chunks(tokio::sync::mpsc::Receiver<Bytes>),
}

/// A blocking reader over chunks sent from an async task.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.cur = c,
                // The sender ended: the end of the object, or its reader
                // failed (which the caller learns from the sender's task).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// [`for_each_feature`] over either kind of body. Blocking: call it on a
/// blocking thread.
pub fn for_each_feature_in(
    body: Body,
    on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<u64, String> {
    match body {
        Body::Whole(b) => for_each_feature(&b, on),
        Body::Chunks(rx) => {
            let r = std::io::BufReader::with_capacity(
                1 << 16,
                ChunkReader {
                    rx,
                    cur: Bytes::new(),
                },
            );
            run(serde_json::Deserializer::from_reader(r), on)
        }
    }
}

/// Calls `on` with each feature and its index, in order. Stops at the
/// first error `on` returns, or at the first byte that is not a
/// FeatureCollection of Features.
pub fn for_each_feature(
    bytes: &[u8],
    on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<u64, String> {
    run(serde_json::Deserializer::from_slice(bytes), on)
}

fn run<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    mut on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<u64, String> {
    let mut state = State {
        on: &mut on,
        n: 0,
        stopped: None,
        features: false,
        kind: None,
    };
    let r = (&mut state).deserialize(&mut de).and_then(|()| de.end());
    if let Some(e) = state.stopped {
        return Err(e);
    }
    r.map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
    if state.kind.as_deref() != Some("FeatureCollection") || !state.features {
        return Err("not a GeoJSON FeatureCollection with a \"features\" array".into());
    }
    Ok(state.n)
}

struct State<'a> {
    on: &'a mut dyn FnMut(usize, Feature) -> Result<(), String>,
    n: u64,
    stopped: Option<String>,
    features: bool,
    kind: Option<String>,
}

impl<'de> DeserializeSeed<'de> for &mut State<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut State<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a GeoJSON FeatureCollection")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        // Owned keys: a reader cannot lend borrowed strings (the top level
        // has two or three keys; the features are parsed by their own type).
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => self.kind = Some(map.next_value::<String>()?),
                "features" => {
                    self.features = true;
                    map.next_value_seed(Features(&mut *self))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct Features<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for Features<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Features<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of Features")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(f) = seq.next_element::<Feature>()? {
            let i = self.0.n as usize;
            self.0.n += 1;
            if let Err(e) = (self.0.on)(i, f) {
                self.0.stopped = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_features_and_refuses_what_is_not_a_collection() {
        let doc = br#"{"type":"FeatureCollection","features":[
            {"type":"Feature","id":1,"geometry":{"type":"Point","coordinates":[1,2]},"properties":{"a":1}},
            {"type":"Feature","id":"b","geometry":null,"properties":null}]}"#;
        let mut ids = Vec::new();
        let n = for_each_feature(doc, |i, f| {
            ids.push((i, f.id.map(|id| format!("{id:?}"))));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(ids.len(), 2);
        assert!(for_each_feature(br#"{"type":"Feature","features":[]}"#, |_, _| Ok(())).is_err());
        assert!(for_each_feature(br#"{"type":"FeatureCollection"}"#, |_, _| Ok(())).is_err());
        assert!(
            for_each_feature(
                br#"{"type":"FeatureCollection","features":[1]}"#,
                |_, _| Ok(())
            )
            .is_err()
        );
        assert!(
            for_each_feature(
                br#"{"type":"FeatureCollection","features":[]} x"#,
                |_, _| Ok(())
            )
            .is_err()
        );
        let stop = for_each_feature(doc, |_, _| Err("enough".into()));
        assert_eq!(stop.unwrap_err(), "enough");
    }

    #[test]
    fn chunks_split_anywhere_read_as_the_whole() {
        let doc = br#"{"type":"FeatureCollection","features":[{"type":"Feature","id":"\u00e9 x","geometry":{"type":"Point","coordinates":[1.5,2]},"properties":{"k":"v\"w"}},{"type":"Feature","id":2,"geometry":null,"properties":{}}]}"#;
        let whole = {
            let mut v = Vec::new();
            for_each_feature(doc, |i, f| {
                v.push((i, serde_json::to_string(&f).unwrap()));
                Ok(())
            })
            .unwrap();
            v
        };
        for size in [1, 2, 7, 64] {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            for c in doc.chunks(size) {
                tx.try_send(Bytes::copy_from_slice(c)).unwrap();
            }
            drop(tx);
            let mut v = Vec::new();
            for_each_feature_in(Body::Chunks(rx), |i, f| {
                v.push((i, serde_json::to_string(&f).unwrap()));
                Ok(())
            })
            .unwrap();
            assert_eq!(v, whole, "chunks of {size}");
        }
        // A stream cut short is refused, not read as fewer features.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Bytes::copy_from_slice(&doc[..doc.len() - 3]))
            .unwrap();
        drop(tx);
        assert!(for_each_feature_in(Body::Chunks(rx), |_, _| Ok(())).is_err());
    }
}
