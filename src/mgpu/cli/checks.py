"""What a client can check as the user before it submits a job, so that a mistake is one line
now instead of a failed job later: the working directory can be entered, the output files can be
written, the command is on the job's PATH.

Owns: these checks and their messages. Must not: talk to the daemon. The job's own host is
the judge in the end (a job on another host may see other files); these checks run on the
client's host, where a single-host cluster runs its jobs and a cluster's shared homes look the
same.
"""

import os

from mgpu import errors
from mgpu.errors import MgpuError


def _refuse(text):
    return MgpuError(errors.INVALID_ARGUMENT, text)


def working_directory(chdir):
    """The job's working directory (absolute): --chdir, else the current one; MgpuError when
    it is missing or cannot be entered by this user."""
    if chdir:
        cwd = os.path.abspath(os.path.expanduser(chdir))
        option = "--chdir %s" % cwd
    else:
        try:
            cwd = os.getcwd()
        except OSError:
            raise _refuse("the current directory no longer exists: cd to another one, or give --chdir") from None
        option = "the current directory %s" % cwd
    if not os.path.exists(cwd):
        raise _refuse("%s: no such directory" % option)
    if not os.path.isdir(cwd):
        raise _refuse("%s: not a directory" % option)
    if not os.access(cwd, os.X_OK):
        raise _refuse("%s: permission denied (you cannot enter it)" % option)
    return cwd


def output_path(option, path):
    """MgpuError unless this user can write `path` (an --output or --error file, absolute, %j and
    the like not yet expanded): the file, else its directory, else the nearest existing parent
    the job will create the missing directories in."""
    if "%" not in os.path.basename(path) and os.path.exists(path):
        if os.path.isdir(path):
            raise _refuse("%s %s: is a directory (give a file name, e.g. %s/%%j.out)" % (option, path, path))
        if not os.access(path, os.W_OK):
            raise _refuse("%s %s: permission denied (you cannot write that file)" % (option, path))
        return
    directory = os.path.dirname(path)
    while "%" in directory:  # named after the job: only its parents can be checked now
        directory = os.path.dirname(directory)
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise _refuse("%s %s: %s is not a directory" % (option, path, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == directory:
            raise _refuse("%s %s: permission denied (you cannot write in %s)" % (option, path, existing))
        raise _refuse("%s %s: the directory %s does not exist, and you cannot create it in %s"
                      % (option, path, os.path.dirname(path), existing))


def command(argv, cwd, env):
    """MgpuError unless argv[0] is an executable file: a path (relative to the job's working
    directory), or a name found on the job's PATH."""
    name = argv[0]
    if "/" in name:
        path = os.path.join(cwd, name)
        if not os.path.exists(path):
            raise _refuse("%s: no such file (relative paths start in %s)" % (name, cwd)
                          if not name.startswith("/") else "%s: no such file" % name)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise _refuse("%s: not an executable file (chmod +x it, or run it through its interpreter, e.g. "
                          "'sh %s')" % (name, name))
        return
    search = env.get("PATH", os.defpath)
    for directory in search.split(":"):
        candidate = os.path.join(os.path.join(cwd, directory) if directory else cwd, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return
    if " " in name.strip():
        raise _refuse("%s: command not found: for a shell command line, run it through a shell: sh -c '%s'"
                      % (name, name.replace("'", "'\\''")))
    raise _refuse("%s: command not found on the job's PATH (your PATH); give its full path, or prepare it "
                  "with --env-setup-cmd (e.g. 'source venv/bin/activate')" % name)
