-- The state database's schema version 2 as autoproc wrote it before its schema went through
-- sqlite-utils (src/autoproc/store.py MIGRATIONS[1] up to then), verbatim: tests/test_store.py
-- builds old databases from it and checks that they open and migrate.
ALTER TABLE files ADD COLUMN cause TEXT NOT NULL DEFAULT 'file';
CREATE TABLE backups (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    time REAL NOT NULL,
    size INTEGER NOT NULL,
    why TEXT NOT NULL
);
CREATE TABLE intake_journal (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    time REAL NOT NULL
);
CREATE TRIGGER intake_journal_no_update BEFORE UPDATE ON intake_journal
    BEGIN SELECT RAISE(ABORT, 'the intake journal is append-only'); END;
CREATE TRIGGER intake_journal_no_delete BEFORE DELETE ON intake_journal
    BEGIN SELECT RAISE(ABORT, 'the intake journal is append-only'); END;
