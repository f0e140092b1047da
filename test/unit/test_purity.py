"""The architecture rules of DESIGN.md, checked on the source text, and for the pure core also
in a fresh interpreter that imports it.

- The pure core (model, scheduler, controller) does no I/O, reads no clock and starts no
  threads: neither it nor any mgpu module it imports (transitively) imports sockets, threads,
  time, sqlite3, pynvml, processes or the OS layer. (`signal` is allowed: the core uses signal
  numbers and names only.)
- auth.py is pure where it can be: it reads the key file (os) and drives TLS (ssl) on sockets it
  is given, and nothing else of that list: it opens no socket, reads no clock, starts no thread
  or process (it imports neither socket nor time, threading or subprocess, even through mgpu).
- Layering: only store.py imports sqlite3; only transport.py (and launcher.py, for the
  supervisor's fallback report to a daemon) imports socket/socketserver; only gpus.py imports
  pynvml; only launcher.py spawns, changes uid or sends signals.
"""

import ast
import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[2] / "src" / "mgpu"
PACKAGE = "mgpu"

PURE_CORE = ("model", "scheduler", "controller")
REQUIRED_PURE = ("model", "scheduler", "controller")

# auth.py: the key file and TLS, and no other forbidden module in its own source or in what it
# imports from mgpu. Importing ssl loads socket and select (ssl's own imports): only those, on
# top, are allowed when a fresh interpreter imports auth.
AUTH_MAY_IMPORT = frozenset(("os", "ssl"))
SSL_LOADS = frozenset(("posix", "socket", "_socket", "select", "selectors"))

FORBIDDEN_IN_CORE = frozenset((
    "socket", "socketserver", "threading", "_thread", "time", "sqlite3", "pynvml", "psutil",
    "subprocess", "os", "select", "selectors", "asyncio", "ssl",
    # Ways around the rule: a dynamic import, or the process-level modules behind os.
    "importlib", "multiprocessing", "concurrent", "posix", "_socket", "_posixsubprocess",
))

# module imported -> files (relative to src/mgpu) that may import it
IMPORT_OWNERS = {
    "sqlite3": ("store.py",),
    "socket": ("transport.py", "launcher.py"),
    "socketserver": ("transport.py", "launcher.py"),
    "pynvml": ("gpus.py",),
    "subprocess": ("launcher.py",),  # "only launcher.py spawns"
}

# os functions that spawn, change identity or send signals -> only launcher.py calls them
PROCESS_CALLS = frozenset((
    "fork", "forkpty", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp",
    "execvpe", "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid",
    "setresgid", "setgroups", "initgroups", "kill", "killpg", "spawnl", "spawnle", "spawnlp",
    "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
    "system", "popen",
))
PROCESS_CALL_OWNERS = ("launcher.py",)


# ---------------------------------------------------------------------------------------------
# The checker (plain functions of a package directory, so they can be tested on a fake one)


class ImportSite:
    """One import in one file: the module it names, as absolute as we can make it."""

    __slots__ = ("module", "line")

    def __init__(self, module, line):
        self.module, self.line = module, line

    @property
    def top(self):
        return self.module.split(".")[0]


def module_name(package_dir, path, package=PACKAGE):
    """`mgpu.cli.srun` for src/mgpu/cli/srun.py, `mgpu.cli` for src/mgpu/cli/__init__.py."""
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package] + parts)


def module_file(package_dir, module, package=PACKAGE):
    """The file of an mgpu module, or None when `module` is not (a module of) the package."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if parts[1:] else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _resolve_relative(current_module, is_package, level, name):
    base = current_module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([name] if name else []))


@functools.lru_cache(maxsize=None)
def _parse(path):
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.lru_cache(maxsize=None)
def imports_of(package_dir, path, package=PACKAGE):
    """Every module `path` imports anywhere (top level or inside functions), absolute names.

    `from . import x` names the submodule `mgpu.x` when it is one, else the package itself;
    `__import__("x")` and `importlib.import_module("x")` with a constant name count too.
    """
    tree = _parse(path)
    current = module_name(package_dir, path, package)
    is_package = path.name == "__init__.py"
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sites.extend(ImportSite(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(current, is_package, node.level, node.module)
            else:
                base = node.module
            sites.append(ImportSite(base, node.lineno))
            for alias in node.names:
                sub = base + "." + alias.name
                if alias.name != "*" and module_file(package_dir, sub, package) is not None:
                    sites.append(ImportSite(sub, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic:
                sites.append(ImportSite(node.args[0].value, node.lineno))
    return tuple(sites)


def forbidden_chains(package_dir, roots, forbidden, package=PACKAGE):
    """For each forbidden import reachable from the `roots` modules through mgpu imports: the
    chain of files and lines that leads to it, as one readable line."""
    found = []
    seen = set()
    stack = []
    for root in roots:
        stack.append((module_file(package_dir, package + "." + root, package), []))
    # Importing mgpu.x runs mgpu/__init__.py first: it is part of every chain.
    init = package_dir / "__init__.py"
    if init.is_file():
        stack.append((init, ["(importing %s runs __init__.py)" % package]))
    while stack:
        path, chain = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        for site in imports_of(package_dir, path, package):
            step = "%s:%d imports %s" % (path.relative_to(package_dir), site.line, site.module)
            target = module_file(package_dir, site.module, package)
            if target is not None:
                if target not in seen:
                    stack.append((target, chain + [step]))
            elif site.top in forbidden:
                found.append(" -> ".join(chain + [step]))
    return sorted(found)


def _os_aliases(tree):
    """Names bound to the os module, and names bound to os functions, in one file."""
    modules, functions = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("os", "posix"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "posix") and not node.level:
            for alias in node.names:
                functions[alias.asname or alias.name] = alias.name
    return modules, functions


def process_calls(path):
    """(line, 'os.name') for every call of an os function in PROCESS_CALLS in one file."""
    tree = _parse(path)
    modules, functions = _os_aliases(tree)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and func.value.id in modules and func.attr in PROCESS_CALLS:
            calls.append((node.lineno, "os." + func.attr))
        elif isinstance(func, ast.Name) and functions.get(func.id) in PROCESS_CALLS:
            calls.append((node.lineno, "os." + functions[func.id]))
    return calls


def source_files(package_dir=PACKAGE_DIR):
    return sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


# ---------------------------------------------------------------------------------------------
# The rules on the real package


def test_the_package_and_the_pure_core_are_where_the_rules_expect_them():
    assert PACKAGE_DIR.is_dir(), "src/mgpu not found at %s" % PACKAGE_DIR
    for name in REQUIRED_PURE:
        assert (PACKAGE_DIR / (name + ".py")).is_file(), (
            "pure-core rule: %s.py is missing; update PURE_CORE in this test if it moved" % name)


@pytest.mark.parametrize("core_module", PURE_CORE)
def test_pure_core_imports_no_io_clock_or_threads(core_module):
    if not (PACKAGE_DIR / (core_module + ".py")).is_file():
        pytest.skip("%s.py does not exist yet" % core_module)
    chains = forbidden_chains(PACKAGE_DIR, [core_module], FORBIDDEN_IN_CORE)
    assert not chains, (
        "pure-core rule (DESIGN.md: the pure core does no I/O, reads no clock, starts no threads) "
        "broken by %s.py:\n  " % core_module + "\n  ".join(chains))


def test_pure_core_may_use_signal_numbers():
    # signal is allowed (names and numbers only); the checker must not count it.
    assert "signal" not in FORBIDDEN_IN_CORE
    assert any(site.top == "signal" for site in imports_of(PACKAGE_DIR, PACKAGE_DIR / "controller.py"))


# What a fresh interpreter (-I -S: no site, no user paths) imports for the pure core. Modules the
# interpreter loads at start-up (time, _thread, posix on 3.11) are taken out of sys.modules and
# a finder refuses every forbidden name, so an import of them anywhere below the pure core (in
# mgpu or in the standard library, at import time) is seen even when it was loaded already.
_FRESH_PROBE = r"""
import json, sys
forbidden = set(sys.argv[1].split(","))
sys.path.insert(0, sys.argv[2])
attempts = []

class Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in forbidden:
            frame, chain = sys._getframe(1), []
            while frame is not None:
                where = frame.f_code.co_filename
                if "<frozen" not in where:
                    chain.append("%s:%d" % (where, frame.f_lineno))
                frame = frame.f_back
            attempts.append("%s (from %s)" % (name, " <- ".join(chain[:4]) or "?"))
            raise ImportError("forbidden in the pure core: " + name)
        return None

for name in list(sys.modules):
    if name.split(".")[0] in forbidden:
        del sys.modules[name]
sys.meta_path.insert(0, Refuse)
errors = []
for module in sys.argv[3].split(","):
    try:
        __import__(module)
    except Exception as e:
        errors.append("%s: %s: %s" % (module, type(e).__name__, e))
loaded = sorted(n for n in sys.modules if n.split(".")[0] in forbidden)
print(json.dumps({"attempts": attempts, "loaded": loaded, "errors": errors}))
"""


def fresh_import_violations(src_dir, modules, forbidden=FORBIDDEN_IN_CORE):
    """Import `modules` (dotted names) from `src_dir` in a fresh isolated interpreter; the
    forbidden imports it attempted and the forbidden modules loaded afterwards, as lines."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FRESH_PROBE, ",".join(sorted(forbidden)), str(src_dir),
         ",".join(modules)], capture_output=True, text=True, timeout=60, env={})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    return (["imports " + a for a in found["attempts"]]
            + ["left %s in sys.modules" % m for m in found["loaded"]]
            + ["cannot import " + e for e in found["errors"]])


def test_a_fresh_interpreter_importing_the_pure_core_loads_no_io_clock_or_threads():
    modules = ["%s.%s" % (PACKAGE, name) for name in PURE_CORE if (PACKAGE_DIR / (name + ".py")).is_file()]
    violations = fresh_import_violations(PACKAGE_DIR.parent, modules)
    assert not violations, ("pure-core rule (DESIGN.md) broken at import time:\n  " + "\n  ".join(violations))


def test_auth_uses_only_the_key_file_and_tls():
    assert (PACKAGE_DIR / "auth.py").is_file()
    chains = forbidden_chains(PACKAGE_DIR, ["auth"], FORBIDDEN_IN_CORE - AUTH_MAY_IMPORT)
    assert not chains, ("auth rule (reads its key file and drives TLS; no sockets of its own, "
                        "no clock, threads or processes) broken:\n  " + "\n  ".join(chains))
    used = {site.top for site in imports_of(PACKAGE_DIR, PACKAGE_DIR / "auth.py")}
    assert AUTH_MAY_IMPORT <= used, used  # guards the rule: it must see what auth does import


def test_a_fresh_interpreter_importing_auth_loads_nothing_but_tls_and_the_os_layer():
    violations = fresh_import_violations(PACKAGE_DIR.parent, ["%s.auth" % PACKAGE],
                                         FORBIDDEN_IN_CORE - AUTH_MAY_IMPORT - SSL_LOADS)
    assert not violations, ("auth rule broken at import time:\n  " + "\n  ".join(violations))


@pytest.mark.parametrize("forbidden", ["time", "threading", "socket", "sqlite3", "pynvml", "os"])
def test_the_fresh_interpreter_check_sees_an_import_already_loaded_or_absent(tmp_path, forbidden):
    # time and _thread are loaded by the interpreter itself before any import of ours; pynvml
    # may not even be installed: each must still count.
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "model.py": "import re\n",
        "scheduler.py": "from . import model\nfrom . import helper\n",
        "helper.py": "def f():\n    return 1\nimport %s\n" % forbidden,
    })
    violations = fresh_import_violations(root.parent, ["mgpu.scheduler"])
    assert any(v.startswith("imports %s (from " % forbidden) and "helper.py:3" in v for v in violations), violations
    assert fresh_import_violations(root.parent, ["mgpu.model"]) == []


@pytest.mark.parametrize("module", sorted(IMPORT_OWNERS))
def test_only_the_owner_imports(module):
    owners = IMPORT_OWNERS[module]
    offenders = []
    for path in source_files():
        relative = str(path.relative_to(PACKAGE_DIR))
        if relative in owners:
            continue
        for site in imports_of(PACKAGE_DIR, path):
            if site.top == module:
                offenders.append("%s:%d imports %s" % (relative, site.line, site.module))
    assert not offenders, "layering rule: only %s may import %s, but\n  %s" % (
        " and ".join(owners), module, "\n  ".join(offenders))


def test_only_launcher_spawns_changes_uid_or_sends_signals():
    offenders = []
    for path in source_files():
        relative = str(path.relative_to(PACKAGE_DIR))
        if relative in PROCESS_CALL_OWNERS:
            continue
        offenders.extend("%s:%d calls %s" % (relative, line, name) for line, name in process_calls(path))
    assert not offenders, ("layering rule: only launcher.py spawns, changes uid or sends signals, but\n  "
                           + "\n  ".join(offenders))


# Calls by attribute name on any object (the signal module, a ctypes libc): sending signals
# through a pidfd or to a thread, changing a thread's filesystem ids.
ATTRIBUTE_CALLS = frozenset(("pidfd_send_signal", "pthread_kill", "setfsuid", "setfsgid"))


def attribute_calls(path):
    """(line, name) for every call of `x.name(...)` with a name in ATTRIBUTE_CALLS."""
    return [(node.lineno, node.func.attr) for node in ast.walk(_parse(path))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ATTRIBUTE_CALLS]


def test_only_launcher_signals_through_pidfds_or_switches_filesystem_ids():
    offenders = []
    for path in source_files():
        relative = str(path.relative_to(PACKAGE_DIR))
        if relative not in PROCESS_CALL_OWNERS:
            offenders.extend("%s:%d calls %s" % (relative, line, name) for line, name in attribute_calls(path))
    assert not offenders, "layering rule: only launcher.py may\n  " + "\n  ".join(offenders)
    found = {name for _, name in attribute_calls(PACKAGE_DIR / "launcher.py")}
    assert {"pidfd_send_signal", "setfsuid", "setfsgid"} <= found, found  # the checker sees them


def test_attribute_calls_are_seen_on_any_receiver(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import signal, ctypes\nlibc = ctypes.CDLL(None)\nlibc.setfsuid(0)\n"
                   "signal.pidfd_send_signal(3, 9)\nx = libc.setfsgid\n")
    assert sorted(attribute_calls(bad)) == [(3, "setfsuid"), (4, "pidfd_send_signal")]


def test_launcher_is_where_the_process_calls_are():
    # Guards the checker itself: if it found nothing in launcher.py it would be blind.
    names = {name for _, name in process_calls(PACKAGE_DIR / "launcher.py")}
    assert {"os.fork", "os.setuid"} <= names and names & {"os.kill", "os.killpg"}, names


# ---------------------------------------------------------------------------------------------
# The checker on a fake package: it must see through relative imports, function-level imports
# and aliases, and name the chain.


def _fake_package(tmp_path, files):
    root = tmp_path / "src" / "mgpu"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_follows_relative_imports_transitively_and_names_the_chain(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "model.py": "import re\nimport signal\n",
        "helpers.py": "from .model import X\n\ndef later():\n    import time\n",
        "controller.py": "from . import helpers\nfrom .model import Y\n",
    })
    chains = forbidden_chains(root, ["controller"], FORBIDDEN_IN_CORE)
    assert chains == ["controller.py:1 imports mgpu.helpers -> helpers.py:4 imports time"]
    assert forbidden_chains(root, ["model"], FORBIDDEN_IN_CORE) == []


def test_checker_sees_the_package_init_dotted_modules_and_dynamic_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "import threading\n",
        "model.py": "import os.path\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..model import Z\nimport importlib\nm = importlib.import_module('sqlite3')\n",
        "scheduler.py": "from .sub import deep\nx = __import__('socket')\n",
    })
    chains = forbidden_chains(root, ["scheduler"], FORBIDDEN_IN_CORE)
    text = "\n".join(chains)
    assert "__init__.py:1 imports threading" in text
    assert "model.py:1 imports os.path" in text
    assert "sub/deep.py:3 imports sqlite3" in text
    assert "sub/deep.py:2 imports importlib" in text
    assert "scheduler.py:2 imports socket" in text


def test_checker_finds_process_calls_through_aliases(tmp_path):
    root = _fake_package(tmp_path, {
        "bad.py": ("import os as o\nfrom os import killpg as kp, getpid\n"
                   "def f():\n    o.fork()\n    kp(1, 9)\n    getpid()\n    o.execvpe('x', [], {})\n"),
    })
    assert sorted(process_calls(root / "bad.py")) == [(4, "os.fork"), (5, "os.killpg"), (7, "os.execvpe")]


# ---------------------------------------------------------------------------------------------
# Client roles start in the time of what they need: none of these modules is loaded by importing
# a client role (nor by parsing its command line). argparse, re and enum (which `import signal`,
# `import socket` and `import json` bring) cost milliseconds on every `mgpu srun` and `mgpu queue`;
# the others belong to the daemons.
CLIENT_MODULES = ("mgpu.cli", "mgpu.cli.srun", "mgpu.cli.queue", "mgpu.cli.cancel", "mgpu.cli.logs",
                  "mgpu.cli.attach", "mgpu.cli.show", "mgpu.cli.history", "mgpu.cli.sbatch",
                  "mgpu.cli.drain", "mgpu.cli.resume", "mgpu.client", "mgpu.cli.render")
NOT_FOR_CLIENTS = frozenset(("argparse", "re", "enum", "yaml", "shutil", "sqlite3", "ssl", "psutil", "pynvml"))

_CLIENT_PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2].split(","):
    __import__(name)
from mgpu.cli import history, queue, srun
parser = srun.build_parser()
srun.build_request(parser.parse_args(["--gpus", "2", "--time-limit", "1:00:00", "--name=x", "-iq", "--",
                                      "true"]), parser)
queue.build_parser().parse_args(["--all", "-j", "1,2"])
history.build_request(history.build_parser().parse_args(["--since", "2h"]), history.build_parser(), 1.7e9)
print(",".join(sorted(sys.modules)))
"""


def loaded_by(src_dir, modules, probe=_CLIENT_PROBE):
    """sys.modules of a fresh interpreter (-I -S: site's .pth files may import re themselves, and
    the binary has no site) once it has imported `modules` from `src_dir` and run `probe`."""
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(src_dir), ",".join(modules)],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return set(result.stdout.strip().split(","))


def test_client_roles_load_no_argparse_re_enum_or_daemon_modules():
    loaded = loaded_by(PACKAGE_DIR.parent, CLIENT_MODULES)
    assert "mgpu.cli.srun" in loaded and "mgpu.client" in loaded, loaded  # the probe ran
    found = sorted(name for name in loaded if name.split(".")[0] in NOT_FOR_CLIENTS)
    assert not found, ("client roles must not load %s (a client starts in the time of what it needs); "
                       "loaded: %s" % (", ".join(sorted(NOT_FOR_CLIENTS)), ", ".join(found)))


def test_the_client_import_check_sees_a_forbidden_import(tmp_path):
    root = _fake_package(tmp_path, {"__init__.py": "", "client.py": "import re\n"})
    probe = "import sys\nsys.path.insert(0, sys.argv[1])\nimport mgpu.client\nprint(','.join(sorted(sys.modules)))\n"
    assert "re" in loaded_by(root.parent, ["mgpu.client"], probe)


def test_test_files_have_distinct_names_across_the_suites():
    """`make test` collects test/unit, test/e2e and test/gpu in one pytest run, where two test
    files of one name cannot both be imported."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen = {}
    for suite in sorted(os.listdir(root)):
        folder = os.path.join(root, suite)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("test_") and name.endswith(".py"):
                assert name not in seen, "test/%s/%s and test/%s/%s share a name" % (seen.get(name), name, suite, name)
                seen[name] = suite
