"""Tables and JSON for what the client shows.

Every text a user chose goes through `text()` (see mgpu.cells): other users see it in their
terminals. JSON output stays exact: json.dumps escapes it itself.
"""

import os
import time

from mgpu import cells
from mgpu.cells import elapsed, gpus_cell, job_label, name_cell, text  # noqa: F401 (the cells' texts)
from mgpu.model import format_duration


def table(headers, rows, hidden=()):
    """Left-aligned columns separated by two spaces; the last column is not padded. A column
    whose index is in `hidden` is left out (its cells may stay in the rows)."""
    widths = [len(h) for h in headers]
    if rows:
        widths = [max(width, max(map(len, column))) for width, column in zip(widths, zip(*rows))]
    line, shown = "", 0
    for i, width in enumerate(widths):
        if i in hidden:
            line += "%.0s"  # the cell is there, shown as nothing
            continue
        line += ("  " if shown else "") + ("%s" if i == len(widths) - 1 else "%%-%ds" % width)
        shown += 1
    return "\n".join((line % tuple(row)).rstrip() for row in [headers] + rows)


def cells_table(lines, now, show_exit=None):
    """`mgpu queue`'s jobs table from its rows as the master sends them (cells.queue_line): the
    EXIT column with `show_exit`, or when None, when a row's job has ended."""
    rows = [line.split(cells.SEPARATOR) for line in lines]
    start, state = cells.START, cells.COLUMNS.index("STATE")
    for row in rows:
        if len(row) != len(cells.COLUMNS):
            raise ValueError("a queue row has not %d cells" % len(cells.COLUMNS))
        row[start] = clock(float(row[start]), now) if row[start] else "-"
    if show_exit is None:
        show_exit = any(row[state] not in ("PENDING", "RUNNING") for row in rows)
    return table(list(cells.COLUMNS), rows, hidden=() if show_exit else (cells.EXIT,))


def jobs_table(jobs, now, show_exit):
    """`mgpu queue`'s jobs table from full queue rows."""
    return cells_table([cells.queue_line(job, now) for job in jobs], now, show_exit)


IN_SERVICE = ("idle", "mixed", "allocated")  # other node states (down, drained, unreachable) are shown by name


def gpus_table(nodes):
    headers = ["NODE", "GPU", "NAME", "MEMORY (RESERVED/TOTAL MB)", "JOBS"]
    rows = []
    for node in nodes:
        for gpu in node["gpus"]:
            memory = "%d/%d" % (gpu["reserved_mb"], gpu["memory_mb"])
            if gpu.get("external_mb"):
                memory += " (+%d used outside mgpu)" % gpu["external_mb"]
            node_cell = text(node["name"]) if node["state"] in IN_SERVICE else "%s (%s)" % (
                text(node["name"]), text(node["state"]))
            rows.append([node_cell, str(gpu["index"]), text(gpu["name"]), memory,
                         ",".join(map(str, gpu["jobs"])) or "-"])
        if not node["gpus"]:
            rows.append([text(node["name"]), "-", "(submit only)" if node.get("submit_only") else "(no GPUs)",
                         "-", "-"])
    return table(headers, rows)


def nodes_table(nodes, now):
    """One row per node: its state (idle, mixed, allocated, down), where it connects from, GPUs
    in use/total and how long ago it was last heard from."""
    headers = ["NODE", "STATE", "ADDRESS", "GPUS (USED/TOTAL)", "LAST HEARTBEAT"]
    rows = []
    for node in nodes:
        used = sum(1 for gpu in node["gpus"] if gpu["jobs"])
        seen = node.get("last_heartbeat")
        rows.append([text(node["name"]), text(node["state"]), text(node.get("address") or "(master)"),
                     "submit only" if node.get("submit_only") else "%d/%d" % (used, len(node["gpus"])),
                     "-" if seen is None else "%s ago" % format_duration(now - seen)])
    return table(headers, rows)


def as_json(result):
    # ensure_ascii (the default) writes every control and non-ASCII character as a \\u escape:
    # exact for a JSON reader, harmless in a terminal.
    import json  # here: it brings re (only --json needs it)

    return json.dumps({"jobs": result["jobs"], "nodes": result["nodes"]}, indent=2, ensure_ascii=True)


def now_of(result):
    return result.get("time") or time.time()


def clock(when, now):
    """A compact local time for a table cell, without spaces: `HH:MM:SS` on the day of `now`,
    `MM-DDTHH:MM` in the same year, `YYYY-MM-DD` before; `-` for none."""
    if when is None:
        return "-"
    try:
        moment, today = time.localtime(when), time.localtime(now)
    except (OverflowError, OSError, ValueError):
        return "-"
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M:%S", moment)
    if moment.tm_year == today.tm_year:
        return time.strftime("%m-%dT%H:%M", moment)
    return time.strftime("%Y-%m-%d", moment)


def timestamp(when):
    """A full local time, `YYYY-MM-DDTHH:MM:SS` as scontrol prints it; `None` for none."""
    if when is None:
        return "None"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))
    except (OverflowError, OSError, ValueError):
        return "None"


def placement(job):
    """Where a job ran: `node:gpu,gpu` per host, space-separated; `-` when it never started."""
    parts = job.get("nodes") or []
    if not parts:
        return "-"
    return " ".join("%s:%s" % (text(part["name"]), ",".join(map(str, part["gpu_ids"])) or "-") for part in parts)


def history_table(jobs, now):
    """`mgpu history`: one row per finished job, oldest first."""
    headers = ["JOBID", "USER", "NAME", "STATE", "EXIT", "SUBMIT", "START", "END", "ELAPSED", "GPUS",
               "NODE:GPUS"]
    rows = []
    for job in jobs:
        rows.append([job_label(job), text(job["user"]), name_cell(job), text(job["state"]),
                     "" if job["exit_code"] is None else str(job["exit_code"]), clock(job["submit_time"], now),
                     clock(job["start_time"], now), clock(job["end_time"], now),
                     elapsed(job, now) if job["start_time"] is not None else "-", gpus_cell(job), placement(job)])
    return table(headers, rows)


def _command_line(command):
    import shlex  # here: it brings re

    return " ".join(shlex.quote(str(arg)) for arg in command)


def _signal_spec(job):
    signum = job.get("warn_signal")
    if not signum:
        return "None"
    import signal  # here: it brings enum

    try:
        name = signal.Signals(signum).name[3:]
    except ValueError:
        name = str(signum)
    return "%s@%s" % (name, job.get("warn_seconds"))


def job_detail(job, now):
    """`mgpu show`: every field of one job, `Key=Value` as `scontrol show job` prints it, values
    escaped; one field group per line."""
    state = job["state"]
    if job["start_time"] is None:
        run_time = "0:00"
    else:
        run_time = elapsed(job, now)
    gpu_ids = ",".join(map(str, job.get("gpu_ids") or ())) or "None"
    memory = "%dM/GPU" % job["mem_mb"] if job.get("mem_mb") else "exclusive"
    nodelist = ",".join(text(n) for n in job.get("nodelist") or ()) or "None"
    exclude = ",".join(text(n) for n in job.get("exclude") or ()) or "None"
    lines = [
        "JobId=%d JobName=%s" % (job["id"], text(job.get("name") or os.path.basename(str(job["command"][0])))),
    ]
    if job.get("array_job_id") is not None:
        if job.get("array_task_id") is not None and job["id"] != job["array_job_id"]:
            lines.append("ArrayJobId=%s ArrayTaskId=%s" % (job["array_job_id"], job["array_task_id"]))
        elif job.get("array_task_id") is not None:
            lines.append("ArrayJobId=%s ArrayTaskId=%s (not started yet)" % (job["array_job_id"], job["array_task_id"]))
        else:
            lines.append("ArrayJobId=%s ArrayTaskId=%s Tasks=%s NotStarted=%s" % (
                job["array_job_id"], text(job_label(job).partition("_")[2]), job.get("array_task_count"),
                job.get("array_pending")))
    lines += [
        "UserId=%s(%s)" % (text(job["user"]), job.get("uid")),
        "JobState=%s Reason=%s" % (text(state), text(job.get("reason") or "None")),
        "ExitCode=%s RestartCnt=%d Attempt=%s Requeue=%d" % (
            "None" if job.get("exit_code") is None else job["exit_code"], job.get("restarts") or 0,
            job.get("attempt", 0), 1 if job.get("requeue") else 0),
        "Priority=%s Position=%s Dependency=%s" % (
            job["priority"], "None" if job.get("position") is None else job["position"],
            text(job.get("dependency") or "None")),
        "SubmitTime=%s StartTime=%s EndTime=%s" % (
            timestamp(job["submit_time"]), timestamp(job["start_time"]), timestamp(job["end_time"])),
        "RunTime=%s TimeLimit=%s Signal=%s" % (run_time, format_duration(job["time_limit"]), _signal_spec(job)),
        "Gpus=%s GpuIds=%s Mem=%s" % (gpus_cell(job).split(" ")[0], gpu_ids, memory),
        "Nodes=%d NodeList=%s" % (job.get("nnodes") or 1, "None" if placement(job) == "-" else placement(job)),
        "ReqNodeList=%s ExcNodeList=%s" % (nodelist, exclude),
        "WorkDir=%s" % text(job.get("cwd") or "None"),
        "StdOut=%s" % text(job.get("output") or "None"),
        "StdErr=%s" % text(job.get("error") or job.get("output") or "None"),
        "Command=%s" % text(_command_line(job["command"])),
    ]
    if "env_setup" in job:
        lines.append("EnvSetup=%s" % text(job["env_setup"] or "None"))
    if job.get("distributed") or job.get("mpi"):
        lines.append("Distributed=%d Mpi=%d" % (1 if job.get("distributed") else 0, 1 if job.get("mpi") else 0))
    return "\n".join(lines[:1] + ["   " + line for line in lines[1:]])


def json_of(value):
    """Any result as indented JSON, every control and non-ASCII character a \\u escape."""
    import json

    return json.dumps(value, indent=2, ensure_ascii=True)
