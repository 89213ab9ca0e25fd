//! Reading a published features artifact: a GeoJSON FeatureCollection
//! that normalisation wrote, streamed one feature at a time straight into
//! `geojson::Feature` (no intermediate JSON tree: this is the projector's
//! hot loop, and the artifact's bytes were checked against the signed
//! manifest's digest before it is read).

use std::fmt;

use geojson::Feature;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Calls `on` with each feature and its index, in order. Stops at the
/// first error `on` returns, or at the first byte that is not a
/// FeatureCollection of Features.
pub fn for_each_feature(
    bytes: &[u8],
    mut on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<u64, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
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
        while let Some(key) = map.next_key::<&str>()? {
            match key {
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
}
