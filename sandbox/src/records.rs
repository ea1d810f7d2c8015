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
#[derive(Debug, Default, Clone)]
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

    /// Puts a row back as it was (`None`: it did not exist, so it is removed), e.g. to roll
    /// back a transaction.
    pub fn restore(&mut self, id: &str, before: Option<&Row>) {
        let key = id.to_ascii_lowercase();
        match (self.index.get(&key).copied(), before) {
            (Some(i), Some(row)) => self.rows[i] = row.clone(),
            (Some(i), None) => {
                self.rows.remove(i);
                self.index = self
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| (row.id.to_ascii_lowercase(), i))
                    .collect();
            }
            (None, Some(row)) => {
                self.index.insert(key, self.rows.len());
                self.rows.push(row.clone());
            }
            (None, None) => {}
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

    #[test]
    fn restore_puts_rows_back_and_removes_new_ones() {
        let mut table = Table::default();
        table.put("A1", fields(json!({"name": "x"})));
        let before = table.clone();
        table.put("A2", fields(json!({"name": "new"})));
        table.update("A1", fields(json!({"name": "changed"})));
        table.put("A3", fields(json!({"name": "other"})));

        table.restore("A2", before.get("A2"));
        table.restore("a1", before.get("A1"));

        assert_eq!(table.get("A1"), before.get("A1"));
        assert!(table.get("A2").is_none());
        assert_eq!(table.get("A3").map(|row| row.version), Some(1), "untouched");
        assert_eq!(table.rows().count(), 2);
    }
}
