"""The cells of `mgpu queue`'s jobs table, from a job's queue row.

The master makes them for the table's compact reply (`queue` with `brief`: one list of cells
per row, kept per pending job until what it shows changes), and the client for rows it has in
full; either way the text is the same. Every text a user chose (job name, command, reason, user,
node and GPU names) goes through `text()`: other users see it in their terminals, so control
characters (terminal escapes, newlines, C1 controls) and other invisible or unencodable
characters are shown as visible escapes (`\\x1b`, `\\n`, `\\u0085`). JSON output stays exact:
json.dumps escapes them itself.

The START cell stays the start time here (its repr, or empty): the client shows it in its own
time zone. A row travels as one string, its cells joined by SEPARATOR (which `text()` escapes,
so no cell holds one): ten thousand rows decode as fast as ten thousand strings.
"""

from .model import format_duration

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_ARRAY_LABEL = 40  # characters of the task ids shown in a pending array's JOBID cell
MAX_NAME = 40         # characters of the NAME cell
# The cells of one row, in order; START (index 5) is the start time, formatted by the client.
COLUMNS = ("JOBID", "USER", "STATE", "PRI", "GPUS", "START", "TIME", "LIMIT", "RESTARTS", "EXIT", "NAME",
           "NODE:GPUS (REASON)")
START, EXIT = 5, 9
SEPARATOR = "\x7f"  # DEL: escaped by text(), and not by JSON (decoded at full speed)


def text(value):
    """`value` as one line of harmless printable text."""
    value = str(value)
    if value.isprintable():  # the common case: nothing to escape
        return value
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in value)


def _escape(ch):
    named = _NAMED_ESCAPES.get(ch)
    if named:
        return named
    code = ord(ch)
    if code < 0x80:
        return "\\x%02x" % code
    return "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code


def job_label(job):
    """The JOBID cell: `42`, `12_7` for a task of job array 12, `12_[5-1000%8]` for the tasks of
    array 12 that have not started (with its throttle)."""
    array_id = job.get("array_job_id")
    if array_id is None:
        return str(job["id"])
    if job.get("array_task_id") is not None:
        return "%s_%s" % (array_id, job["array_task_id"])
    tasks = str(job.get("array_tasks") or "")
    if len(tasks) > MAX_ARRAY_LABEL:
        tasks = tasks[:MAX_ARRAY_LABEL - 3] + "..."
    if job.get("array_throttle"):
        tasks += "%%%s" % job["array_throttle"]
    return "%s_[%s]" % (array_id, tasks)


def gpus_cell(job):
    hosts = job.get("nnodes") or 1
    if hosts > 1:  # N hosts x G GPUs; which ones: in the NODE:GPUS cell
        cell = "%dx%d" % (hosts, job["gpus"])
    else:
        cell = str(job["gpus"])
    if job["gpu_ids"] and hosts == 1:
        cell += " (%s)" % ",".join(map(str, job["gpu_ids"]))
    if job.get("mem_mb"):
        cell += " x%dM" % job["mem_mb"]
    return cell


def elapsed(job, now):
    if job["start_time"] is None:
        return "0:00"
    end = job["end_time"] if job["end_time"] is not None else now
    return format_duration(end - job["start_time"])


def where_or_why(job):
    state = job["state"]
    if state == "PENDING":
        return "(%s)" % text(job.get("reason") or "waiting")
    if state == "RUNNING":
        parts = job.get("nodes") or [{"name": job["node"], "gpu_ids": job["gpu_ids"]}]
        cell = " ".join("%s:%s" % (text(part["name"]), ",".join(map(str, part["gpu_ids"])) or "-")
                        for part in parts)
        if job.get("stopping"):
            cell += " (stopping: %s)" % text(job.get("reason") or "")
        return cell
    return text(job.get("reason") or "")


def name_cell(job):
    """The NAME cell: the job's name, else its command line; at most MAX_NAME characters."""
    name = text(job.get("name") or " ".join(map(str, job["command"])))
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 3] + "..."


def queue_cells(job, now):
    """The cells of a queue row (COLUMNS), START left as the start time."""
    start = job.get("start_time")
    return [job_label(job), text(job["user"]), text(job["state"]), str(job["priority"]), gpus_cell(job),
            "" if start is None else repr(start), elapsed(job, now), format_duration(job["time_limit"]),
            str(job.get("restarts") or 0), "" if job["exit_code"] is None else str(job["exit_code"]),
            name_cell(job), where_or_why(job)]


def queue_line(job, now):
    """A queue row's cells as one string."""
    return SEPARATOR.join(queue_cells(job, now))
