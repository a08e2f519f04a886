//! What a `Deserialize` type accepts at a key path: the field names of the struct or the variant
//! names of the enum found there. Asked of the type itself (a deserializer that walks the path
//! and records what the derived code passes to `deserialize_struct` / `deserialize_enum`), so
//! that config errors can suggest valid names without parsing serde's messages.

use std::cell::Cell;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

/// What `T` accepts at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A struct: its keys.
    Keys(&'static [&'static str]),
    /// An enum: its values.
    Values(&'static [&'static str]),
    /// Anything else, or a type that does not say (maps, untagged enums).
    Unknown,
}

/// Walks `T` along `path` and reports what it accepts there.
pub fn accepted<T: DeserializeOwned>(path: &[String]) -> Accepted {
    let found = Cell::new(Accepted::Unknown);
    let _ = T::deserialize(Walk { path, found: &found });
    found.get()
}

/// Ends the walk; nothing is deserialized for real.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("introspection stop")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Stop
    }
}

struct Walk<'a> {
    path: &'a [String],
    found: &'a Cell<Accepted>,
}

impl<'de> de::Deserializer<'de> for Walk<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        match self.path.split_first() {
            None => {
                self.found.set(Accepted::Keys(fields));
                Err(Stop)
            }
            Some((key, rest)) => visitor.visit_map(OneKey {
                key: Some(key),
                value: Some(Walk {
                    path: rest,
                    found: self.found,
                }),
            }),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.path.split_first() {
            None => Err(Stop),
            Some((key, rest)) => visitor.visit_map(OneKey {
                key: Some(key),
                value: Some(Walk {
                    path: rest,
                    found: self.found,
                }),
            }),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        if self.path.is_empty() {
            self.found.set(Accepted::Values(variants));
        }
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct identifier ignored_any
    }
}

/// A map with the one key the walk follows.
struct OneKey<'a> {
    key: Option<&'a String>,
    value: Option<Walk<'a>>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(k) => seed.deserialize(StrDeserializer::<Stop>::new(k)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(self.value.take().ok_or(Stop)?)
    }
}
