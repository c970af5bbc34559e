//! `type`-tagged JSON objects whose list of types keeps growing upstream: the variants poolgate
//! knows are typed, every other one is kept as it came (for pass-through, and so a translation
//! can name the type it cannot serve instead of failing on a parse error).

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The `type` values a [`Tagged`] enum deserializes into its typed variants.
pub trait KnownTags {
    /// Tags of the typed variants.
    const TAGS: &'static [&'static str];
    /// The tag assumed when an object has no `type` (e.g. `message` for `{role, content}`).
    const UNTAGGED: Option<&'static str> = None;
}

/// A known variant, or any other tagged object kept as it came.
#[derive(Clone, Debug, PartialEq)]
pub enum Tagged<K> {
    Known(K),
    Other { kind: String, raw: Value },
}

impl<K> Tagged<K> {
    /// The known variant, or the `type` of the unknown one.
    pub fn known(&self) -> Result<&K, &str> {
        match self {
            Tagged::Known(known) => Ok(known),
            Tagged::Other { kind, .. } => Err(kind),
        }
    }

    /// Owned form of [`Tagged::known`].
    pub fn into_known(self) -> Result<K, String> {
        match self {
            Tagged::Known(known) => Ok(known),
            Tagged::Other { kind, .. } => Err(kind),
        }
    }
}

impl<'de, K: DeserializeOwned + KnownTags> Deserialize<'de> for Tagged<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(deserializer)?;
        let Value::Object(object) = &mut value else {
            return Err(D::Error::custom("expected an object with a `type`"));
        };
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(_) => return Err(D::Error::custom("`type` must be a string")),
            None => match K::UNTAGGED {
                Some(default) => {
                    object.insert("type".to_owned(), Value::String(default.to_owned()));
                    default.to_owned()
                }
                None => return Err(D::Error::missing_field("type")),
            },
        };
        if !K::TAGS.contains(&kind.as_str()) {
            return Ok(Tagged::Other { kind, raw: value });
        }
        K::deserialize(value)
            .map(Tagged::Known)
            .map_err(|error| D::Error::custom(format!("`{kind}`: {error}")))
    }
}

impl<K: Serialize> Serialize for Tagged<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tagged::Known(known) => known.serialize(serializer),
            Tagged::Other { raw, .. } => raw.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Shape {
        Circle { radius: f64 },
    }

    impl KnownTags for Shape {
        const TAGS: &'static [&'static str] = &["circle"];
        const UNTAGGED: Option<&'static str> = Some("circle");
    }

    #[test]
    fn known_tags_are_typed_and_others_kept_whole() {
        let shapes: Vec<Tagged<Shape>> = serde_json::from_value(json!([
            {"type": "circle", "radius": 1.5},
            {"radius": 2.0},
            {"type": "square", "side": 3, "extra": [1]}
        ]))
        .unwrap();
        assert_eq!(shapes[0], Tagged::Known(Shape::Circle { radius: 1.5 }));
        assert_eq!(shapes[1], Tagged::Known(Shape::Circle { radius: 2.0 }));
        assert_eq!(shapes[2].known().unwrap_err(), "square");
        assert_eq!(
            serde_json::to_value(&shapes[2]).unwrap(),
            json!({"type": "square", "side": 3, "extra": [1]})
        );
    }

    #[test]
    fn a_malformed_known_variant_names_its_type() {
        let error =
            serde_json::from_value::<Tagged<Shape>>(json!({"type": "circle", "radius": "x"}))
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("`circle`: invalid type"), "{error}");
        assert!(serde_json::from_value::<Tagged<Shape>>(json!({"type": 3})).is_err());
        assert!(serde_json::from_value::<Tagged<Shape>>(json!("circle")).is_err());
    }
}
