"""Tables and JSON for what the client shows."""

import json
import time

from mgpu.model import format_duration


def table(headers, rows):
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers] + rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def gpus_cell(job):
    count = job["gpus"]
    text = str(count)
    if job["gpu_ids"]:
        text += " (%s)" % ",".join(map(str, job["gpu_ids"]))
    if job.get("mem_mb"):
        text += " x%dM" % job["mem_mb"]
    return text


def elapsed(job, now):
    if job["start_time"] is None:
        return "0:00"
    end = job["end_time"] if job["end_time"] is not None else now
    return format_duration(end - job["start_time"])


def where_or_why(job):
    state = job["state"]
    if state == "PENDING":
        return "(%s)" % (job.get("reason") or "waiting")
    if state == "RUNNING":
        text = "%s:%s" % (job["node"], ",".join(map(str, job["gpu_ids"])) or "-")
        if job.get("stopping"):
            text += " (stopping: %s)" % (job.get("reason") or "")
        return text
    return job.get("reason") or ""


def jobs_table(jobs, now, show_exit):
    headers = ["JOBID", "USER", "STATE", "PRI", "GPUS", "TIME", "LIMIT"]
    if show_exit:
        headers.append("EXIT")
    headers += ["NAME", "NODE:GPUS (REASON)"]
    rows = []
    for job in jobs:
        row = [str(job["id"]), job["user"], job["state"], str(job["priority"]), gpus_cell(job),
               elapsed(job, now), format_duration(job["time_limit"])]
        if show_exit:
            row.append("" if job["exit_code"] is None else str(job["exit_code"]))
        name = job.get("name") or " ".join(job["command"])
        row += [name if len(name) <= 40 else name[:37] + "...", where_or_why(job)]
        rows.append(row)
    return table(headers, rows)


def gpus_table(nodes):
    headers = ["NODE", "GPU", "NAME", "MEMORY (RESERVED/TOTAL MB)", "JOBS"]
    rows = []
    for node in nodes:
        for gpu in node["gpus"]:
            memory = "%d/%d" % (gpu["reserved_mb"], gpu["memory_mb"])
            if gpu.get("external_mb"):
                memory += " (+%d used outside mgpu)" % gpu["external_mb"]
            rows.append([node["name"] if node["state"] == "UP" else "%s (%s)" % (node["name"], node["state"]),
                         str(gpu["index"]), gpu["name"], memory, ",".join(map(str, gpu["jobs"])) or "-"])
        if not node["gpus"]:
            rows.append([node["name"], "-", "(no GPUs)", "-", "-"])
    return table(headers, rows)


def as_json(result):
    return json.dumps({"jobs": result["jobs"], "nodes": result["nodes"]}, indent=2)


def now_of(result):
    return result.get("time") or time.time()
