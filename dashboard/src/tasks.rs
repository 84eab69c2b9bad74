//! Reading a profile's task database (`tasks.db`, SQLite in WAL mode) read-only: the recent
//! tasks. The controller is the only writer; a reader never blocks it (WAL), and a missing
//! database is simply no tasks.
//!
//! What an engine runs now is not read here: the controller writes a task's `started` only
//! with its outcome (a row waits up to 200 ms for it, and an apply's start comes with its
//! reply), so the live view asks the controller instead (`events`).

use std::time::Duration;

use parallax_wire::cluster::EngineId;
use parallax_wire::profile::Profile;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

/// One row of `GET /api/clusters/{profile}/tasks`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub msg_id: String,
    pub engine: Option<EngineId>,
    pub msg_type: String,
    pub status: String,
    pub submitted: Option<String>,
    pub started: Option<String>,
    pub completed: Option<String>,
    /// The first line of the code, at most 80 characters.
    pub code: String,
}

fn open(profile: &Profile) -> Result<Option<Connection>, rusqlite::Error> {
    let path = profile.dir().join("tasks.db");
    if !path.exists() {
        return Ok(None);
    }
    let connection = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(2))?;
    Ok(Some(connection))
}

/// The first line of `code`, shortened to 80 characters.
pub fn summary(code: &str) -> String {
    let line = code.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut short: String = line.chars().take(80).collect();
    if line.chars().count() > 80 || code.trim().lines().count() > 1 {
        short.push('…');
    }
    short
}

/// The `limit` most recently submitted tasks, newest first.
pub fn recent(profile: &Profile, limit: usize) -> Result<Vec<TaskRow>, String> {
    let read = || -> Result<Vec<TaskRow>, rusqlite::Error> {
        let Some(connection) = open(profile)? else {
            return Ok(Vec::new());
        };
        let mut statement = connection.prepare(
            "SELECT msg_id, engine, msg_type, status, submitted, started, completed, code \
             FROM tasks ORDER BY submitted DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
            Ok(TaskRow {
                msg_id: row.get(0)?,
                engine: row.get(1)?,
                msg_type: row.get(2)?,
                status: row.get(3)?,
                submitted: row.get(4)?,
                started: row.get(5)?,
                completed: row.get(6)?,
                code: summary(&row.get::<_, Option<String>>(7)?.unwrap_or_default()),
            })
        })?;
        rows.collect()
    };
    read().map_err(|e| format!("cannot read the task database of {:?}: {e}", profile.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_keep_the_first_line() {
        assert_eq!(summary("x = 1"), "x = 1");
        assert_eq!(summary("\nimport os\nprint(1)"), "import os…");
        assert_eq!(summary(&"a".repeat(100)).chars().count(), 81);
        assert_eq!(summary(""), "");
    }

    #[test]
    fn a_profile_without_a_database_has_no_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        assert_eq!(recent(&profile, 10), Ok(Vec::new()));
    }

    #[test]
    fn recent_tasks_come_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        std::fs::create_dir_all(profile.dir()).expect("mkdir");
        let db = Connection::open(profile.dir().join("tasks.db")).expect("db");
        db.execute_batch(
            "CREATE TABLE tasks (msg_id TEXT PRIMARY KEY, client TEXT, engine INTEGER, \
             msg_type TEXT, status TEXT, submitted TEXT, started TEXT, completed TEXT, code TEXT);
             INSERT INTO tasks VALUES ('a', 'c', 0, 'execute_request', 'ok', '1', '1', '2', 'x=1');
             INSERT INTO tasks VALUES ('b', 'c', 1, 'execute_request', 'pending', '2', '2', NULL, 'sleep(1)');",
        )
        .expect("schema");
        let rows = recent(&profile, 10).expect("rows");
        let ids: Vec<&str> = rows.iter().map(|r| r.msg_id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(recent(&profile, 1).expect("rows").len(), 1);
        assert_eq!(rows[0].code, "sleep(1)");
    }
}
