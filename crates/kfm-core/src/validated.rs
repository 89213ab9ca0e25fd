//! Deserialisation of validated string newtypes.
//!
//! `#[serde(try_from = "String")]` validates only after the string has been
//! read, so YAML errors end up located at the enclosing mapping. Validating
//! inside the visitor instead lets the YAML deserialiser attach the exact
//! line and column of the offending value, which is what a person fixing a
//! spec needs.

/// Implements `Deserialize` for `$ty` by calling `<$ty>::try_from(String)`
/// from inside the string visitor.
macro_rules! deserialize_via_try_from_string {
    ($ty:ty, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$ty, E> {
                        <$ty>::try_from(s.to_owned()).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
