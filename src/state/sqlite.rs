//! The SQLite side of the store: the state itself for `embedded`, and the
//! outbox of writes waiting for Redis for `redis`. WAL with
//! `synchronous = NORMAL`: a committed write survives the process being
//! killed (`kill -9`); only an operating-system crash can lose the last
//! commits (use `FULL` for that, at a cost per write).

use rusqlite::{Connection, params};

use super::{Event, Flag, Mirror, StoreError, SubjectKind};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA busy_timeout = 5000;
CREATE TABLE IF NOT EXISTS flags (
    callee TEXT NOT NULL,
    caller TEXT NOT NULL,
    since  INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (callee, caller)
);
-- Reports before this table counted unverified callers (anyone could
-- poison a number); they are not carried over.
DROP TABLE IF EXISTS reports;
CREATE TABLE IF NOT EXISTS unwanted (
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    callee  TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (kind, subject, callee)
);
CREATE INDEX IF NOT EXISTS unwanted_at ON unwanted (at);
CREATE TABLE IF NOT EXISTS outbox (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);
";

pub(super) fn init(db: &Connection) -> Result<(), StoreError> {
    db.execute_batch(SCHEMA)?;
    Ok(())
}

/// Applies a write to the state tables. For a flag removal, whether there
/// was one.
pub(super) fn apply(db: &Connection, e: &Event) -> Result<bool, StoreError> {
    match e {
        Event::FlagAdd(f) => {
            db.prepare_cached(
                "INSERT INTO flags (callee, caller, since, origin) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (callee, caller) DO UPDATE SET since = excluded.since, origin = excluded.origin",
            )?
            .execute(params![f.callee, f.caller, f.since, f.origin])?;
            Ok(true)
        }
        Event::FlagRemove { callee, caller } => Ok(db
            .prepare_cached("DELETE FROM flags WHERE callee = ?1 AND caller = ?2")?
            .execute(params![callee, caller])?
            > 0),
        Event::Report {
            kind,
            subject,
            callee,
            at,
        } => {
            db.prepare_cached(
                "INSERT INTO unwanted (kind, subject, callee, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, subject, callee) DO UPDATE SET at = max(at, excluded.at)",
            )?
            .execute(params![kind.as_str(), subject, callee, at])?;
            Ok(true)
        }
    }
}

/// Flags, for one callee or all, ordered.
pub(super) fn list_flags(db: &Connection, callee: Option<&str>) -> Result<Vec<Flag>, StoreError> {
    let mut st = db.prepare_cached(
        "SELECT callee, caller, since, origin FROM flags
         WHERE ?1 IS NULL OR callee = ?1 ORDER BY callee, caller",
    )?;
    let rows = st.query_map(params![callee], |r| {
        Ok(Flag {
            callee: r.get(0)?,
            caller: r.get(1)?,
            since: r.get(2)?,
            origin: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Everything the call path reads, reports since `since` only.
pub(super) fn load(db: &Connection, since: i64) -> Result<Mirror, StoreError> {
    let mut m = Mirror::default();
    for f in list_flags(db, None)? {
        m.apply(&Event::FlagAdd(f), since);
    }
    let mut st =
        db.prepare_cached("SELECT kind, subject, callee, at FROM unwanted WHERE at >= ?1")?;
    let rows = st.query_map(params![since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (kind, subject, callee, at) = row?;
        if let Some(kind) = SubjectKind::parse(&kind) {
            m.apply(
                &Event::Report {
                    kind,
                    subject,
                    callee,
                    at,
                },
                since,
            );
        }
    }
    Ok(m)
}

/// Deletes reports older than `since`; how many.
pub(super) fn prune(db: &Connection, since: i64) -> Result<usize, StoreError> {
    Ok(db.execute("DELETE FROM unwanted WHERE at < ?1", params![since])?)
}

/// Changes committed by other connections since the last call change this.
pub(super) fn data_version(db: &Connection) -> Result<i64, StoreError> {
    Ok(db.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// Queues a write for Redis.
pub(super) fn outbox_push(db: &Connection, e: &Event) -> Result<(), StoreError> {
    db.prepare_cached("INSERT INTO outbox (event) VALUES (?1)")?
        .execute(params![e.encode()])?;
    Ok(())
}

/// The oldest queued writes, at most `n`.
pub(super) fn outbox_peek(db: &Connection, n: usize) -> Result<Vec<(i64, Event)>, StoreError> {
    let mut st = db.prepare_cached("SELECT id, event FROM outbox ORDER BY id LIMIT ?1")?;
    let rows = st.query_map(params![i64::try_from(n).unwrap_or(100)], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, text) = row?;
        match Event::decode(&text) {
            Some(e) => out.push((id, e)),
            // Unreadable (never written by this version): drop it.
            None => {
                db.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
            }
        }
    }
    Ok(out)
}

pub(super) fn outbox_done(db: &Connection, id: i64) -> Result<(), StoreError> {
    db.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

pub(super) fn outbox_len(db: &Connection) -> Result<u64, StoreError> {
    let n: i64 = db.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
