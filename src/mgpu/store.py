"""Persistence of jobs and their state changes in SQLite (WAL); the only place with SQL.

Owns: the schema, loading the state at start-up, and writing each batch of changes in one
transaction. Must not: decide anything about jobs.

A job is stored as one JSON record beside its state; its environment, written once at submit,
lives in its own table so state changes do not rewrite it and the master need not hold every
pending job's environment in memory. An environment holds a user's secrets: it is deleted in the
transaction that records the job's end.

Durability: `synchronous=FULL`, so a committed batch survives a power loss; the master commits
each batch of events once and only then replies or launches. A record that cannot be loaded (a
state written by a faulty version, a damaged row) is moved to the `set_aside` table with its
reason, so the master always starts.

A job array lives in the `arrays` table while a task of it is to start or runs: its record (the
template of its tasks and the array's own fields, written once) and its progress (the task ids
not started yet, how many tasks ended how, whether one started), rewritten as tasks start and
end. Its environment is stored under the array's id; a task that starts gets a copy of it, in
the transaction that records the start, and the array's is deleted with the array's record.

Drained nodes (`mgpu drain`) live in the meta table as `drained:NAME` -> reason, so a drain
outlasts a restart of the master and of the node. Nodes on other hosts that have joined live
there as `node:NAME` -> {gpus, address, submit_only}: after a restart the master knows them (for
--nodelist, admission and the node table) before they reconnect.
"""

import json
import os
import sqlite3
import time
from urllib.parse import quote

from .model import (ARRAY_FIELDS, DEPENDENCY_TYPES, MAX_ARRAY_TASKS, MAX_DEPENDENCIES, ArrayTasks, Job, JobArray,
                    JobState, check_array_runs)

SCHEMA_VERSION = 1
DRAINED_PREFIX = "drained:"   # meta keys of drained nodes: drained:NAME -> reason
NODE_PREFIX = "node:"         # meta keys of remote nodes: node:NAME -> JSON of their inventory
_MAX_NODE_RECORD = 1 << 20
_MAX_NODE_NAME = 64           # protocol.MAX_NODE_NAME
_MAX_DRAINED_REASON = 256     # protocol.MAX_DRAIN_REASON

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_env (id INTEGER PRIMARY KEY, env TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (id INTEGER, state TEXT, record TEXT, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrays (id INTEGER PRIMARY KEY, record TEXT NOT NULL, progress TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    job_id INTEGER NOT NULL, time REAL NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL,
    reason TEXT NOT NULL, cause TEXT NOT NULL);
"""

_encode = json.JSONEncoder(separators=(",", ":")).encode


class StoreError(Exception):
    pass


# Numbers in a loaded record must be plain JSON numbers of a sane size (a time or a count).
_MAX_NUMBER = 1 << 53
_FINAL = tuple(sorted(JobState.FINAL))


def _check_value(value, depth=0):
    if isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
        if "\0" in value:
            raise ValueError("NUL in a string")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, (int, float)):
        if not -_MAX_NUMBER <= value <= _MAX_NUMBER:  # also rejects NaN
            raise ValueError("number out of range")
    elif isinstance(value, (list, tuple)) and depth < 3:  # parts: [[name, [ids]], ...]
        for item in value:
            _check_value(item, depth + 1)
    else:
        raise ValueError("unexpected %s" % type(value).__name__)


# Fields that must be whole numbers (or null) in a loaded record.
_INT_FIELDS = ("id", "uid", "gid", "gpus", "mem_mb", "time_limit", "priority", "warn_signal",
               "warn_seconds", "queue_seq", "exit_code", "attempt", "restarts", "sup_pid", "sup_start",
               "pgid", "umask", "array_job_id", "array_task_id")
_NUMBER_FIELDS = ("submit_time", "start_time", "end_time", "stop_deadline")


def _load_job(record):
    """A Job from its stored record; ValueError (or another exception) when it is not one."""
    fields = json.loads(record)
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    for value in fields.values():
        _check_value(value)
    for name in _INT_FIELDS:
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("%s is not a whole number" % name)
    for name in _NUMBER_FIELDS:
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError("%s is not a number" % name)
    for name in ("nodelist", "exclude"):
        value = fields.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
            raise ValueError("%s is not a list of node names" % name)
    dependency = fields.get("dependency")
    if dependency is not None and not (isinstance(dependency, list) and len(dependency) <= MAX_DEPENDENCIES and all(
            isinstance(e, list) and len(e) == 3 and e[0] in DEPENDENCY_TYPES and isinstance(e[1], int)
            and not isinstance(e[1], bool) and e[1] >= 1 and isinstance(e[2], bool) for e in dependency)):
        raise ValueError("dependency is not a list of [type, job id, met]")
    job = Job.from_dict(fields)
    if not isinstance(job.id, int) or job.state not in JobState.ALL:
        raise ValueError("no valid id or state")
    if not job.command or not isinstance(job.user, str) or not isinstance(job.uid, int):
        raise ValueError("no command or owner")
    return job


def _load_array(array_id, record, progress):
    """A JobArray from its stored record and progress; ValueError (or another exception) when
    they are not one."""
    record, progress = json.loads(record), json.loads(progress)
    if not (isinstance(record, dict) and isinstance(progress, dict)):
        raise ValueError("not JSON objects")
    fields = record.get("array")
    if not isinstance(fields, dict):
        raise ValueError("no array fields")
    template = _load_job(_encode(record.get("template")))
    if template.id != array_id or fields.get("id") != array_id:
        raise ValueError("its id differs from the row's")
    for name in ARRAY_FIELDS:
        value = fields.get(name)
        if name == "spec":
            if not isinstance(value, str):
                raise ValueError("spec is not text")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError("%s is not a whole number" % name)
    why = check_array_runs(progress.get("pending"))
    if why is not None:
        raise ValueError(why)
    ended = progress.get("ended")
    if not (isinstance(ended, dict) and all(state in JobState.FINAL and isinstance(n, int) and not isinstance(n, bool)
                                            and 0 <= n <= MAX_ARRAY_TASKS for state, n in ended.items())):
        raise ValueError("ended is not {final state: count}")
    return JobArray(array_id, template, ArrayTasks(progress["pending"]), fields.get("throttle") or None,
                    fields["spec"], fields.get("task_count"), fields.get("task_min"), fields.get("task_max"),
                    ended, progress.get("started") is True)


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
            # FULL: an acknowledged submit survives a power loss, not only a killed process.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise StoreError("state database %s is from a newer mgpu (schema %s, this one knows %d)"
                                 % (self.path, version, SCHEMA_VERSION))
        except sqlite3.DatabaseError as e:
            raise StoreError("cannot open the state database %s: %s" % (self.path, e)) from None
        self.set_aside = []  # one line per record load() could not use

    def _meta(self, key):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def load(self, keep_finished):
        """(active jobs, the newest `keep_finished` finished jobs, next job id, next queue seq).
        Records that cannot be used are moved aside; `self.set_aside` says which and why."""
        self.set_aside = []
        rows = self.db.execute("SELECT id, state, record FROM jobs WHERE state IN (?, ?) ORDER BY id",
                               (JobState.PENDING, JobState.RUNNING)).fetchall()
        active = self._usable(rows)
        rows = self.db.execute("SELECT id, state, record FROM jobs WHERE state NOT IN (?, ?) ORDER BY id DESC LIMIT ?",
                               (JobState.PENDING, JobState.RUNNING, keep_finished)).fetchall()
        finished = self._usable(reversed(rows))
        # Environments of ended jobs (left by an older version) are users' secrets: gone.
        self.db.execute("DELETE FROM job_env WHERE id IN (SELECT id FROM jobs WHERE state IN (%s))"
                        % ",".join("?" * len(_FINAL)), _FINAL)
        max_id = self.db.execute("SELECT MAX(id) FROM (SELECT id FROM jobs UNION ALL SELECT id FROM set_aside "
                                 "UNION ALL SELECT id FROM arrays)"
                                 ).fetchone()[0] or 0  # a set-aside job's id is never given again
        next_id = max(int(self._meta("next_job_id") or 1), max_id + 1)
        max_seq = max((job.queue_seq or 0 for job in active), default=0)
        next_seq = max(int(self._meta("next_queue_seq") or 1), max_seq + 1)
        return active, finished, next_id, next_seq

    def _usable(self, rows):
        jobs = []
        for job_id, state, record in rows:
            try:
                job = _load_job(record)
                if job.id != job_id or job.state != state:
                    raise ValueError("id or state differ from the row's")
            except Exception as e:
                reason = "%s: %s" % (type(e).__name__, e)
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO set_aside (id, state, record, reason) VALUES (?, ?, ?, ?)",
                                (job_id, state, record, reason))
                self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                self.db.execute("DELETE FROM job_env WHERE id = ?", (job_id,))
                self.db.execute("COMMIT")
                self.set_aside.append("job %s: its stored record cannot be loaded (%s); set aside in "
                                      "the table set_aside of %s" % (job_id, reason[:200], self.path))
                continue
            jobs.append(job)
        return jobs

    def load_arrays(self):
        """The job arrays with tasks to start or running. A row that cannot be loaded is moved to
        set_aside (state ARRAY); `self.set_aside` says which and why."""
        arrays = []
        for array_id, record, progress in self.db.execute("SELECT id, record, progress FROM arrays ORDER BY id").fetchall():
            try:
                arrays.append(_load_array(array_id, record, progress))
            except Exception as e:
                reason = "%s: %s" % (type(e).__name__, e)
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO set_aside (id, state, record, reason) VALUES (?, 'ARRAY', ?, ?)",
                                (array_id, _encode([record, progress]), reason))
                self.db.execute("DELETE FROM arrays WHERE id = ?", (array_id,))
                self.db.execute("DELETE FROM job_env WHERE id = ?", (array_id,))
                self.db.execute("COMMIT")
                self.set_aside.append("job array %s: its stored record cannot be loaded (%s); set aside in the "
                                      "table set_aside of %s" % (array_id, reason[:200], self.path))
        return arrays

    def write(self, jobs, envs, transitions, next_id, next_seq, drained=None, nodes=None, arrays=None,
              env_copies=None):
        """One durable transaction: changed jobs, new environments, recorded transitions,
        counters (not written when None), drained nodes ({name: reason, or None when resumed}),
        remote nodes ({name: their record}); the environments of jobs that ended are deleted.
        arrays: [(JobArray, whole, done)]: its record and progress (whole), its progress only, or
        its deletion with its environment (done); env_copies: [(task job id, array id)]: a new
        task's environment, copied from its array's. StoreError when it cannot be written
        (a full disk): nothing of it is then stored."""
        db = self.db
        try:
            db.execute("BEGIN")
            if jobs:
                db.executemany("INSERT OR REPLACE INTO jobs (id, state, record) VALUES (?, ?, ?)",
                               [(job.id, job.state, _encode(job.to_dict())) for job in jobs])
            if envs:
                db.executemany("INSERT OR REPLACE INTO job_env (id, env) VALUES (?, ?)",
                               [(job_id, _encode(env)) for job_id, env in envs])
            if env_copies:
                db.executemany("INSERT OR REPLACE INTO job_env (id, env) SELECT ?, env FROM job_env WHERE id = ?",
                               env_copies)
            ended = [(job.id,) for job in jobs if job.state in JobState.FINAL]
            if ended:
                db.executemany("DELETE FROM job_env WHERE id = ?", ended)
            for array, whole, done in arrays or ():
                if done:
                    db.execute("DELETE FROM arrays WHERE id = ?", (array.id,))
                    db.execute("DELETE FROM job_env WHERE id = ?", (array.id,))
                elif whole:
                    db.execute("INSERT OR REPLACE INTO arrays (id, record, progress) VALUES (?, ?, ?)",
                               (array.id, _encode(array.record()), _encode(array.progress())))
                else:
                    db.execute("UPDATE arrays SET progress = ? WHERE id = ?", (_encode(array.progress()), array.id))
            if transitions:
                db.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?)",
                               [(t.job_id, t.time, t.old, t.new, t.reason, t.cause) for t in transitions])
            if next_id is not None:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_job_id', ?), ('next_queue_seq', ?)",
                           (str(next_id), str(next_seq)))
            for name, reason in (drained or {}).items():
                if reason is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (DRAINED_PREFIX + name,))
                else:
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (DRAINED_PREFIX + name, reason))
            if nodes:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               [(NODE_PREFIX + name, _encode(record)) for name, record in nodes.items()])
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.Error):
                raise StoreError("cannot write the state database %s: %s" % (self.path, e)) from None
            raise

    def _per_node(self, prefix, most):
        """(node name, value) of the meta rows `prefix`NAME whose name is a plausible node name
        and whose value is text of at most `most` characters, with no NUL in either."""
        rows = self.db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                               (len(prefix), prefix)).fetchall()
        for key, value in rows:
            name = key[len(prefix):]
            if (isinstance(value, str) and 0 < len(name) <= _MAX_NODE_NAME and len(value) <= most
                    and "\0" not in name + value):
                yield name, value

    def load_drained(self):
        """Drained nodes: {name: reason}. A row that is not plausible (a name or reason too
        long, a NUL) is ignored: the node is then not drained."""
        return dict(self._per_node(DRAINED_PREFIX, _MAX_DRAINED_REASON))

    def load_nodes(self):
        """Remote nodes that joined before: {name: {"gpus": [...], "address": str,
        "submit_only": bool}}. A row that is not plausible is ignored (the node is then known
        again when it reconnects)."""
        nodes = {}
        for name, value in self._per_node(NODE_PREFIX, _MAX_NODE_RECORD):
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("gpus"), list):
                nodes[name] = record
        return nodes

    def save_drained(self, changes):
        """One durable transaction: {name: reason} drains a node, {name: None} resumes it.
        StoreError when it cannot be written."""
        self.write((), (), (), None, None, drained=changes)

    def job_env(self, job_id):
        row = self.db.execute("SELECT env FROM job_env WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def transitions(self, job_id):
        return self.db.execute("SELECT time, old, new, reason, cause FROM transitions WHERE job_id = ? "
                               "ORDER BY rowid", (job_id,)).fetchall()

    def close(self):
        self.db.close()


class QueryTooSlow(StoreError):
    pass


class HistoryReader:
    """A read-only connection to the state database for `mgpu history` and `mgpu show` of jobs
    no longer kept in memory. It lives on one reader thread of the master (never the loop's):
    WAL lets it read a committed snapshot while the loop writes. A query that runs longer than
    `deadline` seconds is interrupted (QueryTooSlow), so a huge database cannot hold a snapshot
    open (which would keep the WAL from being checkpointed) or keep a client waiting for long.

    Jobs are scanned newest first by id (the table's own order, no sort) and the scan stops once
    `limit` + 1 matches are found; the filters look into each job's JSON record."""

    def __init__(self, path, deadline=10.0):
        self.path = path
        self.deadline = deadline
        try:
            self.db = sqlite3.connect("file:%s?mode=ro" % _uri_path(path), uri=True, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA query_only=1")
        except sqlite3.DatabaseError as e:
            raise StoreError("cannot open the state database %s: %s" % (path, e)) from None

    def finished_jobs(self, user=None, states=None, ids=None, since=None, limit=1000, clock=None):
        """(the newest `limit` finished jobs that match, in id order; whether more match).
        `user`: that user's only; `states`: final states among these; `ids`: these job ids;
        `since`: jobs that ended at or after this time (epoch seconds). A record that cannot be
        loaded is skipped (the master sets it aside at its next start)."""
        wanted = sorted(JobState.FINAL if states is None else set(states) & JobState.FINAL)
        if not wanted or (ids is not None and not ids):
            return [], False
        sql = ["SELECT id, state, record FROM jobs NOT INDEXED WHERE state IN (%s)" % ",".join("?" * len(wanted))]
        args = list(wanted)
        if ids is not None:  # a job array's id names its tasks
            sql.append("AND (id IN (SELECT value FROM json_each(?)) OR json_extract(record, '$.array_job_id') IN "
                       "(SELECT value FROM json_each(?)))")
            args.extend([_encode(sorted(set(ids)))] * 2)
        if user is not None:
            sql.append("AND json_extract(record, '$.user') = ?")
            args.append(user)
        if since is not None:
            sql.append("AND json_extract(record, '$.end_time') >= ?")
            args.append(since)
        sql.append("ORDER BY id DESC LIMIT ?")
        args.append(limit + 1)
        clock = clock or time.monotonic
        give_up = clock() + self.deadline
        self.db.set_progress_handler(lambda: 1 if clock() > give_up else 0, 10000)
        try:
            rows = self.db.execute(" ".join(sql), args).fetchall()
        except sqlite3.OperationalError as e:
            if "interrupt" in str(e):
                raise QueryTooSlow("the query ran longer than %g s" % self.deadline) from None
            raise StoreError("cannot read the state database %s: %s" % (self.path, e)) from None
        except sqlite3.DatabaseError as e:
            raise StoreError("cannot read the state database %s: %s" % (self.path, e)) from None
        finally:
            self.db.set_progress_handler(None, 0)
        more = len(rows) > limit
        jobs = []
        for job_id, state, record in reversed(rows[:limit]):
            try:
                job = _load_job(record)
            except Exception:
                continue
            if job.id == job_id and job.state == state:
                jobs.append(job)
        return jobs, more

    def close(self):
        self.db.close()


def _uri_path(path):
    return quote(os.path.abspath(path))


