//! The check the `db_query` fuzz target runs (`fuzz/fuzz_targets/db_query.rs`), kept here so that
//! its committed corpus (`fuzz/corpus/db_query/`) also runs through it in a plain `cargo test`.
//!
//! Compiled for this crate's tests and with the `fuzzing` feature (which only the fuzz crate
//! turns on); not part of the crate's API.

use std::cell::RefCell;

use parallax_wire::cluster::QueryRequest;
use rusqlite::Connection;

use crate::db::SCHEMA;
use crate::query::Query;

/// Words the statement may be made of: SQL, the table's columns, operators. Anything else in it
/// came from the query, which must only ever reach SQLite as a bound parameter.
const WORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "tasks",
    "value",
    "json_each",
    "WHERE",
    "AND",
    "ORDER",
    "BY",
    "rowid",
    "IS",
    "NOT",
    "NULL",
    "IN",
    "0",
    "1",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "msg_id",
    "client",
    "engine",
    "msg_type",
    "status",
    "submitted",
    "started",
    "completed",
    "received",
    "stdout",
    "stderr",
    "error",
    "result",
    "code",
    "result_bytes",
];

thread_local! {
    /// A task database with the controller's schema and a few tasks, opened once per thread.
    static DB: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// The `db_query` translation (a `query_request`'s content → [`Query`]): never panics; what it
/// accepts is one statement of known words and numbered parameters, one per value given, that
/// SQLite prepares and runs on the controller's schema.
pub fn db_query(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<QueryRequest>(data) else {
        return;
    };
    let query = match Query::parse(&request.query, request.keys.as_deref()) {
        Ok(query) => query,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let (sql, params) = query.statement();
    let mut marks = 0;
    for word in sql.split([' ', ',', '(', ')']).filter(|w| !w.is_empty()) {
        if let Some(number) = word.strip_prefix('?') {
            let number: usize = number.parse().expect("?N");
            assert!((1..=params.len()).contains(&number), "{sql}");
            marks += 1;
        } else {
            assert!(WORDS.contains(&word), "{word:?} in {sql}");
        }
    }
    assert_eq!(marks, params.len(), "{sql}");
    DB.with(|db| {
        let mut db = db.borrow_mut();
        let db = db.get_or_insert_with(|| {
            let db = Connection::open_in_memory().expect("an in-memory database");
            db.execute_batch(SCHEMA).expect("the schema");
            db.execute_batch(
                "INSERT INTO tasks (msg_id, client, engine, msg_type, status, submitted,
                    completed, error, result)
                 VALUES ('a', 'c', 0, 'execute_request', 'ok', '2026-01-01T00:00:01Z',
                    '2026-01-01T00:00:02Z', NULL, '{\"x\": 1}'),
                 ('b', 'c', 1, 'apply_request', 'error', '2026-01-01T00:00:03Z', NULL,
                    '{\"ename\": \"ZeroDivisionError\"}', 'not json');",
            )
            .expect("tasks");
            db
        });
        query.run(db).expect("an accepted query runs");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_query_corpus() {
        for (path, data) in parallax_wire::fuzzing::corpus("db_query") {
            eprintln!("{}", path.display());
            db_query(&data);
        }
    }
}
