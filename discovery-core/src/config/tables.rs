//! `[cluster_formation]` with the backends' tables in a map: the struct's own keys are
//! deserialized by its derived code (unknown keys refused with the closest valid one), and a
//! key it does not name whose value is a table is set aside whole for its backend. So the core
//! config names no backend, and a backend adds its table without a change here. Whether such a
//! table belongs to a known backend is the registry's question (the facade checks every table).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::FormationConfig;

impl<'de> Deserialize<'de> for FormationConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut tables = BTreeMap::new();
        let mut config = FormationConfig::deserialize(SetAside {
            inner: d,
            tables: &mut tables,
        })?;
        config.backend_tables = tables;
        Ok(config)
    }
}

impl Serialize for FormationConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// The struct's own keys, then the backends' tables beside them.
        #[derive(Serialize)]
        struct Whole<'a> {
            #[serde(flatten, serialize_with = "own_keys")]
            own: &'a FormationConfig,
            #[serde(flatten)]
            tables: &'a BTreeMap<String, toml::Table>,
        }
        fn own_keys<S: Serializer>(c: &&FormationConfig, s: S) -> Result<S::Ok, S::Error> {
            FormationConfig::serialize(c, s)
        }
        Whole {
            own: self,
            tables: &self.backend_tables,
        }
        .serialize(s)
    }
}

/// A deserializer that hands the derived code only the keys it names (and unknown keys whose
/// value is not a table, for it to refuse), keeping the other tables in `tables`.
struct SetAside<'t, D> {
    inner: D,
    tables: &'t mut BTreeMap<String, toml::Table>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for SetAside<'_, D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            Filter {
                visitor,
                fields,
                tables: self.tables,
            },
        )
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The derived visitor, given a map that sets tables aside.
struct Filter<'t, V> {
    visitor: V,
    fields: &'static [&'static str],
    tables: &'t mut BTreeMap<String, toml::Table>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Filter<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(FilterMap {
            map,
            fields: self.fields,
            tables: self.tables,
        })
    }
}

struct FilterMap<'t, A> {
    map: A,
    fields: &'static [&'static str],
    tables: &'t mut BTreeMap<String, toml::Table>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilterMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            if self.fields.contains(&key.as_str()) {
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
            // Refused inside the value, so that the error's path names the key.
            let table = self.map.next_value_seed(TableOnly {
                key: &key,
                fields: self.fields,
            })?;
            self.tables.insert(key, table);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A backend's table under an unknown key; any other value is an unknown key.
struct TableOnly<'k> {
    key: &'k str,
    fields: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for TableOnly<'_> {
    type Value = toml::Table;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<toml::Table, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Table(t) => Ok(t),
            _ => Err(de::Error::unknown_field(self.key, self.fields)),
        }
    }
}
