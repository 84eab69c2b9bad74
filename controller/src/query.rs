//! `query_request`: the subset of MongoDB's query language that ipyparallel's `db_query` uses,
//! turned into one SQL statement over the `tasks` table.
//!
//! A query is an object of column → condition. A condition is a value (equality; `null` matches
//! a missing value) or an object of operators: `$eq`, `$ne`, `$lt`, `$lte` (`$le`), `$gt`,
//! `$gte` (`$ge`), `$in`, `$nin`. Conditions on several columns all have to hold. Dates are
//! ISO 8601 text, which orders correctly as text. Everything a client sends ends up as a bound
//! parameter; column names come from a fixed list, so nothing of the query is pasted into SQL.

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::db::parse_json;

/// Columns a query may test.
const FILTERS: &[&str] = &[
    "msg_id",
    "client",
    "engine",
    "msg_type",
    "status",
    "submitted",
    "started",
    "completed",
    "received",
];
/// Columns a query may return (the filters and these).
const EXTRA_KEYS: &[&str] = &[
    "stdout",
    "stderr",
    "error",
    "result",
    "code",
    "result_bytes",
];
/// Columns holding JSON text, returned parsed.
const JSON_KEYS: &[&str] = &["error", "result"];

/// A checked query, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    sql: String,
    params: Vec<SqlValue>,
    keys: Vec<&'static str>,
}

/// Why a query was refused: shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum QueryError {
    #[error("a query is an object of column: condition, not {0}")]
    NotAnObject(String),
    #[error("cannot query on {0:?} (columns: {list})", list = FILTERS.join(", "))]
    UnknownColumn(String),
    #[error("unknown key {0:?} (keys: {list}, {extra})", list = FILTERS.join(", "), extra = EXTRA_KEYS.join(", "))]
    UnknownKey(String),
    #[error("unknown operator {0:?} (operators: $eq $ne $lt $lte $gt $gte $in $nin)")]
    UnknownOperator(String),
    #[error("{0} needs a list")]
    NeedsList(String),
    #[error("cannot compare with {0}: use a string, a number or null")]
    BadValue(String),
}

impl Query {
    /// Checks `query` and `keys` (all columns when `None`) and builds the statement.
    pub(crate) fn parse(query: &Value, keys: Option<&[String]>) -> Result<Self, QueryError> {
        let Value::Object(conditions) = query else {
            return Err(QueryError::NotAnObject(query.to_string()));
        };
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        for (column, condition) in conditions {
            let column =
                known(FILTERS, column).ok_or_else(|| QueryError::UnknownColumn(column.clone()))?;
            match condition {
                Value::Object(operators) => {
                    condition_clauses(column, operators, &mut clauses, &mut params)?
                }
                value => clauses.push(compare(column, "$eq", value, &mut params)?),
            }
        }
        let keys: Vec<&'static str> = match keys {
            None => FILTERS.iter().chain(EXTRA_KEYS).copied().collect(),
            Some(keys) => keys
                .iter()
                .map(|key| {
                    known(FILTERS, key)
                        .or_else(|| known(EXTRA_KEYS, key))
                        .ok_or_else(|| QueryError::UnknownKey(key.clone()))
                })
                .collect::<Result<_, _>>()?,
        };
        let columns = if keys.is_empty() {
            "msg_id".to_owned()
        } else {
            keys.join(", ")
        };
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        Ok(Query {
            sql: format!("SELECT {columns} FROM tasks{filter} ORDER BY submitted, rowid"),
            params,
            keys,
        })
    }

    /// The statement and its bound parameters, for the fuzz checks.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn statement(&self) -> (&str, &[SqlValue]) {
        (&self.sql, &self.params)
    }

    /// The selected records, as objects of the requested keys.
    pub(crate) fn run(&self, db: &Connection) -> rusqlite::Result<Vec<Value>> {
        let mut statement = db.prepare(&self.sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(self.params.iter()), |row| {
            let mut record = Map::new();
            for (index, key) in self.keys.iter().enumerate() {
                let value: SqlValue = row.get(index)?;
                record.insert((*key).to_owned(), to_json(key, value));
            }
            Ok(Value::Object(record))
        })?;
        rows.collect()
    }
}

fn known(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter().copied().find(|candidate| *candidate == name)
}

fn condition_clauses(
    column: &str,
    operators: &Map<String, Value>,
    clauses: &mut Vec<String>,
    params: &mut Vec<SqlValue>,
) -> Result<(), QueryError> {
    for (operator, operand) in operators {
        match operator.as_str() {
            "$in" | "$nin" => {
                let Value::Array(items) = operand else {
                    return Err(QueryError::NeedsList(operator.clone()));
                };
                let negate = operator == "$nin";
                if items.is_empty() {
                    clauses.push(if negate { "1" } else { "0" }.to_owned());
                    continue;
                }
                // Each item is checked as a compared value would be, and the list goes as one
                // JSON parameter: SQLite binds at most 32,766 parameters to a statement, and
                // `db_query({"msg_id": {"$in": ids}})` of a long run names more tasks than that.
                for item in items {
                    sql_value(item)?;
                }
                params.push(SqlValue::Text(operand.to_string()));
                let not = if negate { "NOT " } else { "" };
                clauses.push(format!(
                    "{column} {not}IN (SELECT value FROM json_each(?{}))",
                    params.len()
                ));
            }
            other => clauses.push(compare(column, other, operand, params)?),
        }
    }
    Ok(())
}

/// One comparison of `column` with a value.
fn compare(
    column: &str,
    operator: &str,
    operand: &Value,
    params: &mut Vec<SqlValue>,
) -> Result<String, QueryError> {
    let sql = match operator {
        "$eq" => "=",
        "$ne" => "!=",
        "$lt" => "<",
        "$lte" | "$le" => "<=",
        "$gt" => ">",
        "$gte" | "$ge" => ">=",
        other => return Err(QueryError::UnknownOperator(other.to_owned())),
    };
    if operand.is_null() {
        return match sql {
            "=" => Ok(format!("{column} IS NULL")),
            "!=" => Ok(format!("{column} IS NOT NULL")),
            _ => Err(QueryError::BadValue("null".into())),
        };
    }
    params.push(sql_value(operand)?);
    Ok(format!("{column} {sql} ?{}", params.len()))
}

fn sql_value(value: &Value) -> Result<SqlValue, QueryError> {
    match value {
        Value::Null => Ok(SqlValue::Null),
        Value::String(text) => Ok(SqlValue::Text(text.clone())),
        Value::Number(number) => Ok(match number.as_i64() {
            Some(integer) => SqlValue::Integer(integer),
            None => SqlValue::Real(number.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::Bool(flag) => Ok(SqlValue::Integer(i64::from(*flag))),
        other => Err(QueryError::BadValue(other.to_string())),
    }
}

fn to_json(key: &str, value: SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(integer) => Value::from(integer),
        SqlValue::Real(real) => Value::from(real),
        SqlValue::Text(text) if JSON_KEYS.contains(&key) => {
            parse_json(Some(text)).unwrap_or(Value::Null)
        }
        SqlValue::Text(text) => Value::String(text),
        SqlValue::Blob(blob) => Value::from(blob.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> Connection {
        let db = Connection::open_in_memory().expect("db");
        db.execute_batch(
            "CREATE TABLE tasks (msg_id TEXT, client TEXT, engine INTEGER, msg_type TEXT,
                status TEXT, submitted TEXT, started TEXT, completed TEXT, received TEXT,
                stdout TEXT, stderr TEXT, error TEXT, result TEXT, code TEXT,
                result_buffers BLOB, result_bytes INTEGER);
             INSERT INTO tasks (msg_id, engine, status, submitted, completed, error) VALUES
                ('a', 0, 'ok', '2026-01-01T00:00:01Z', '2026-01-01T00:00:02Z', NULL),
                ('b', 1, 'error', '2026-01-01T00:00:03Z', '2026-01-01T00:00:04Z',
                 '{\"ename\": \"ZeroDivisionError\"}'),
                ('c', 0, 'pending', '2026-01-01T00:00:05Z', NULL, NULL);",
        )
        .expect("schema");
        db
    }

    fn ids(query: Value) -> Vec<String> {
        let keys = vec!["msg_id".to_owned()];
        let query = Query::parse(&query, Some(&keys)).expect("valid");
        query
            .run(&db())
            .expect("runs")
            .iter()
            .map(|r| r["msg_id"].as_str().expect("id").to_owned())
            .collect()
    }

    #[test]
    fn conditions_select_rows() {
        let cases = [
            (json!({}), vec!["a", "b", "c"]),
            (json!({"msg_id": {"$in": ["a", "c", "z"]}}), vec!["a", "c"]),
            (json!({"msg_id": {"$nin": ["a"]}}), vec!["b", "c"]),
            (json!({"msg_id": {"$in": []}}), vec![]),
            (json!({"engine": 0}), vec!["a", "c"]),
            (json!({"engine": 0, "status": "ok"}), vec!["a"]),
            (json!({"status": {"$ne": "pending"}}), vec!["a", "b"]),
            (json!({"completed": null}), vec!["c"]),
            (json!({"completed": {"$ne": null}}), vec!["a", "b"]),
            (
                json!({"submitted": {"$gte": "2026-01-01T00:00:03Z", "$lt": "2026-01-01T00:00:05Z"}}),
                vec!["b"],
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(ids(query.clone()), expected, "{query}");
        }
    }

    #[test]
    fn in_takes_lists_longer_than_sqlite_binds_parameters() {
        // SQLite binds at most 32,766 parameters; one per item failed on longer lists (found
        // while writing the `db_query` fuzz check).
        let mut names: Vec<Value> = (0..40_000).map(|i| json!(format!("id{i}"))).collect();
        names.push(json!("b"));
        assert_eq!(ids(json!({"msg_id": {"$in": names.clone()}})), vec!["b"]);
        assert_eq!(ids(json!({"msg_id": {"$nin": names}})), vec!["a", "c"]);
        assert_eq!(ids(json!({"engine": {"$in": [1, 1.0, true]}})), vec!["b"]);
        assert_eq!(ids(json!({"engine": {"$nin": [0]}})), vec!["b"]);
    }

    #[test]
    fn keys_pick_columns_and_json_is_parsed() {
        let keys = vec!["msg_id".to_owned(), "error".to_owned(), "engine".to_owned()];
        let query = Query::parse(&json!({"msg_id": "b"}), Some(&keys)).expect("valid");
        let records = query.run(&db()).expect("runs");
        assert_eq!(
            records,
            vec![json!({"msg_id": "b", "error": {"ename": "ZeroDivisionError"}, "engine": 1})]
        );
        let all = Query::parse(&json!({"msg_id": "a"}), None).expect("valid");
        let record = &all.run(&db()).expect("runs")[0];
        assert!(record.get("stdout").is_some() && record.get("result_bytes").is_some());
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let cases = [
            (json!([1]), "a query is an object"),
            (json!({"x; DROP TABLE tasks": 1}), "cannot query on"),
            (
                json!({"engine": {"$regex": "1"}}),
                "unknown operator \"$regex\"",
            ),
            (json!({"msg_id": {"$in": "a"}}), "$in needs a list"),
            (json!({"engine": {"$lt": null}}), "cannot compare with null"),
            (json!({"engine": [1]}), "cannot compare with [1]"),
        ];
        for (query, expected) in cases {
            let error = Query::parse(&query, None).expect_err("refused");
            assert!(error.to_string().contains(expected), "{query}: {error}");
        }
        let keys = vec!["header".to_owned()];
        let error = Query::parse(&json!({}), Some(&keys)).expect_err("refused");
        assert!(error.to_string().starts_with("unknown key \"header\""));
    }
}
