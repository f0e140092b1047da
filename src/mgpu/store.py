"""Persistence of jobs and their state changes in SQLite (WAL); the only place with SQL.

Owns: the schema, loading the state at start-up, and writing each batch of changes in one
transaction. Must not: decide anything about jobs.

A job is stored as one JSON record beside its state; its environment, written once at submit,
lives in its own table so state changes do not rewrite it and the master need not hold every
pending job's environment in memory.
"""

import json
import os
import sqlite3

from .model import Job, JobState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_env (id INTEGER PRIMARY KEY, env TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    job_id INTEGER NOT NULL, time REAL NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL,
    reason TEXT NOT NULL, cause TEXT NOT NULL);
"""

_encode = json.JSONEncoder(separators=(",", ":")).encode


class StoreError(Exception):
    pass


class Store:
    def __init__(self, state_dir):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)  # job records and users' environments live here
        self.path = os.path.join(state_dir, "mgpu.db")
        try:
            # Created private first: SQLite gives its -wal and -shm files the database's mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing
            self.db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise StoreError("state database %s is from a newer mgpu (schema %s, this one knows %d)"
                                 % (self.path, version, SCHEMA_VERSION))
        except sqlite3.DatabaseError as e:
            raise StoreError("cannot open the state database %s: %s" % (self.path, e)) from None

    def _meta(self, key):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def load(self, keep_finished):
        """(active jobs, the newest `keep_finished` finished jobs, next job id, next queue seq)."""
        rows = self.db.execute("SELECT record FROM jobs WHERE state IN (?, ?) ORDER BY id",
                               (JobState.PENDING, JobState.RUNNING)).fetchall()
        active = [Job.from_dict(json.loads(record)) for (record,) in rows]
        rows = self.db.execute("SELECT record FROM jobs WHERE state NOT IN (?, ?) ORDER BY id DESC LIMIT ?",
                               (JobState.PENDING, JobState.RUNNING, keep_finished)).fetchall()
        finished = [Job.from_dict(json.loads(record)) for (record,) in reversed(rows)]
        max_id = self.db.execute("SELECT MAX(id) FROM jobs").fetchone()[0] or 0
        next_id = max(int(self._meta("next_job_id") or 1), max_id + 1)
        max_seq = max((job.queue_seq or 0 for job in active), default=0)
        next_seq = max(int(self._meta("next_queue_seq") or 1), max_seq + 1)
        return active, finished, next_id, next_seq

    def write(self, jobs, envs, transitions, next_id, next_seq):
        """One transaction: changed jobs, new environments, recorded transitions, counters."""
        db = self.db
        db.execute("BEGIN")
        try:
            if jobs:
                db.executemany("INSERT OR REPLACE INTO jobs (id, state, record) VALUES (?, ?, ?)",
                               [(job.id, job.state, _encode(job.to_dict())) for job in jobs])
            if envs:
                db.executemany("INSERT OR REPLACE INTO job_env (id, env) VALUES (?, ?)",
                               [(job_id, _encode(env)) for job_id, env in envs])
            if transitions:
                db.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?)",
                               [(t.job_id, t.time, t.old, t.new, t.reason, t.cause) for t in transitions])
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_job_id', ?), ('next_queue_seq', ?)",
                       (str(next_id), str(next_seq)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def job_env(self, job_id):
        row = self.db.execute("SELECT env FROM job_env WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def transitions(self, job_id):
        return self.db.execute("SELECT time, old, new, reason, cause FROM transitions WHERE job_id = ? "
                               "ORDER BY rowid", (job_id,)).fetchall()

    def close(self):
        self.db.close()


