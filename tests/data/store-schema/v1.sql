-- The state database's schema version 1 as autoproc wrote it before its schema went through
-- sqlite-utils (src/autoproc/store.py MIGRATIONS[0] up to then), verbatim: tests/test_store.py
-- builds old databases from it and checks that they open and migrate.
CREATE TABLE subjects (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    data TEXT NOT NULL DEFAULT '{}',
    held TEXT,
    entry INTEGER,
    entered REAL NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (kind, key)
);
CREATE INDEX subjects_kind_state ON subjects (kind, state);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    subject_id INTEGER NOT NULL REFERENCES subjects (id),
    from_state TEXT,
    to_state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX journal_subject ON journal (subject_id, id);
CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    subject_id INTEGER NOT NULL REFERENCES subjects (id),
    stage TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    try INTEGER NOT NULL,
    entry INTEGER NOT NULL,
    status TEXT NOT NULL,
    argv TEXT,
    cwd TEXT,
    log TEXT,
    pid INTEGER,
    pgid INTEGER,
    host TEXT,
    started REAL,
    ended REAL,
    exit_status INTEGER,
    result TEXT NOT NULL DEFAULT '{}',
    applied INTEGER NOT NULL DEFAULT 0,
    not_before REAL
);
CREATE INDEX attempts_subject ON attempts (subject_id, id);
CREATE INDEX attempts_status ON attempts (status);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    subject_id INTEGER REFERENCES subjects (id),
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    info TEXT NOT NULL DEFAULT '{}',
    seen REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX files_subject ON files (subject_id, status);
CREATE INDEX files_status ON files (status);
CREATE TABLE problems (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    status TEXT NOT NULL DEFAULT ''
);
