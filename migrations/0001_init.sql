-- The namespace file: the log, the state it produces, and the file's identity.
-- Column names are a contract (DESIGN.md §2): users and tests query them directly.

-- Every change ever committed, in order. `seq` is dense from 1; `txn` is the seq of the first
-- entry of the atomic group the entry was committed in; `crc` chains over the previous entry's
-- crc and every other column (see src/log.rs for the exact encoding).
CREATE TABLE wal_log (
    seq   INTEGER PRIMARY KEY,
    txn   INTEGER NOT NULL,
    op    TEXT    NOT NULL CHECK (op IN ('put', 'delete')),
    key   TEXT    NOT NULL,
    value BLOB,
    ts_ms INTEGER NOT NULL,
    crc   INTEGER NOT NULL
);

-- The current value of every live key: always equal to replaying wal_log from the start.
CREATE TABLE kv (
    key   TEXT    PRIMARY KEY,
    value BLOB    NOT NULL,
    seq   INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL
);

-- Identity of the file: `log_id` (minted once by the primary that created the namespace,
-- copied by replicas) and `namespace`.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
