//! A tiny in-memory table of JSON records, shared by the Dataverse and Salesforce
//! stand-ins: rows keep their creation order and a version number bumped on each write.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub fields: Map<String, Value>,
    /// 1 on insert, +1 on every update (Dataverse `versionnumber`, ETags).
    pub version: u64,
}

/// Records of one table / sObject type, in creation order.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
}

impl Table {
    /// The row with this id (ids compare case-insensitively, like GUIDs do).
    pub fn get(&self, id: &str) -> Option<&Row> {
        self.index
            .get(&id.to_ascii_lowercase())
            .map(|&i| &self.rows[i])
    }

    /// Rows in creation order.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    /// Rows whose `field` equals `value` (strings compare case-insensitively).
    pub fn find_by<'a>(
        &'a self,
        field: &'a str,
        value: &'a Value,
    ) -> impl Iterator<Item = &'a Row> {
        self.rows.iter().filter(move |row| {
            row.fields.get(field).is_some_and(|v| match (v, value) {
                (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a == b,
            })
        })
    }

    /// Inserts a new row (version 1) or, when `id` exists, replaces its fields (version + 1).
    /// Returns the stored row and whether it was created.
    pub fn put(&mut self, id: &str, fields: Map<String, Value>) -> (&Row, bool) {
        let key = id.to_ascii_lowercase();
        if let Some(&i) = self.index.get(&key) {
            let row = &mut self.rows[i];
            row.fields = fields;
            row.version += 1;
            (&self.rows[i], false)
        } else {
            self.index.insert(key, self.rows.len());
            self.rows.push(Row {
                id: id.to_owned(),
                fields,
                version: 1,
            });
            (self.rows.last().expect("just pushed"), true)
        }
    }

    /// Merges `changes` into an existing row (version + 1). `None` when absent.
    pub fn update(&mut self, id: &str, changes: Map<String, Value>) -> Option<&Row> {
        let &i = self.index.get(&id.to_ascii_lowercase())?;
        let row = &mut self.rows[i];
        row.fields.extend(changes);
        row.version += 1;
        Some(&self.rows[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn put_creates_then_replaces_and_bumps_the_version() {
        let mut table = Table::default();
        let (_, created) = table.put("A1", fields(json!({"name": "x"})));
        assert!(created);
        let (row, created) = table.put("a1", fields(json!({"name": "y"})));
        assert!(!created);
        assert_eq!((row.version, &row.fields["name"]), (2, &json!("y")));
        let row = table
            .update("A1", fields(json!({"city": "Oslo"})))
            .expect("exists");
        assert_eq!(row.version, 3);
        assert_eq!(row.fields["name"], json!("y"));
        assert_eq!(
            table.find_by("NAME", &json!("Y")).count(),
            0,
            "field names are exact"
        );
        assert_eq!(table.find_by("name", &json!("Y")).count(), 1);
    }
}
