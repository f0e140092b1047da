"""Daemon configuration: YAML file, then MGPU_SOCKET, then flags -> one validated, frozen Config;
every bad value is one line that names the option."""

import os

import pytest

from mgpu import config, errors, paths
from mgpu.config import Config, ConfigError


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Never read the real /etc/mgpu/mgpu.yaml, nor the caller's XDG directories."""
    monkeypatch.setattr(paths, "SYSTEM_CONFIG", str(tmp_path / "absent" / "mgpu.yaml"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("MGPU_SOCKET", raising=False)


def write(tmp_path, text, name="mgpu.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(path=None, overrides=None, uid=1000, environ=None):
    return config.load(path, overrides, uid=uid, environ={} if environ is None else environ)


def fails(*args, **kwargs):
    with pytest.raises(ConfigError) as raised:
        load(*args, **kwargs)
    message = str(raised.value)
    assert "\n" not in message, message
    assert raised.value.code == errors.INVALID_ARGUMENT
    return message


# ---------------------------------------------------------------------------------------------
# Defaults


def test_defaults_for_root():
    c = load(uid=0)
    assert (c.socket, c.state_dir) == ("/run/mgpu/mgpu.sock", "/var/lib/mgpu")
    assert c.source == "defaults"
    assert (c.fake_gpus, c.max_job_time, c.max_user_priority, c.kill_grace, c.policy, c.operators,
            c.allow_root_jobs, c.keep_finished) == (None, None, 100, 10.0, "fill_first", (), False, 10000)
    assert c.node_name and "." not in c.node_name


def test_connection_caps_default_to_1024_in_all_and_128_per_user():
    c = load(uid=0)
    assert (c.max_connections, c.max_connections_per_user) == (1024, 128)
    assert load(overrides={"max_connections": "16", "max_connections_per_user": 4}).as_dict()[
        "max_connections"] == 16


def test_connection_caps_come_from_the_file(tmp_path):
    c = load(write(tmp_path, "max_connections_per_user: 16\n"))
    assert (c.max_connections, c.max_connections_per_user) == (1024, 16)


def test_defaults_for_a_user(tmp_path):
    c = load(uid=1000)
    assert c.socket == "/tmp/mgpu-1000/mgpu.sock"
    assert c.state_dir == str(tmp_path / "xdg-state" / "mgpu")
    assert c.source == "defaults"


def test_a_users_socket_lives_in_their_runtime_dir(tmp_path, monkeypatch):
    runtime = tmp_path / "run-user"
    runtime.mkdir()
    uid = os.getuid() or 1000
    if os.getuid() == 0:
        os.chown(runtime, uid, -1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert load(uid=uid).socket == str(runtime / "mgpu" / "mgpu.sock")
    # A runtime dir that belongs to someone else is not used.
    assert load(uid=uid + 1).socket == "/tmp/mgpu-%d/mgpu.sock" % (uid + 1)


def test_the_system_config_is_read_for_root_only(tmp_path, monkeypatch):
    system = write(tmp_path, "policy: spread\n", "system.yaml")
    monkeypatch.setattr(paths, "SYSTEM_CONFIG", system)
    root = load(uid=0)
    assert (root.policy, root.source) == ("spread", system)
    assert load(uid=1000).policy == "fill_first"


def test_an_empty_file_gives_the_defaults(tmp_path):
    c = load(write(tmp_path, "# nothing here\n"))
    assert c.policy == "fill_first" and c.source.endswith("mgpu.yaml")


# ---------------------------------------------------------------------------------------------
# Precedence: file < MGPU_SOCKET < flags


def test_the_environment_beats_the_file_and_flags_beat_both(tmp_path):
    path = write(tmp_path, "socket: /from/file.sock\nkill_grace: 3\n")
    env = {"MGPU_SOCKET": "/from/env.sock"}
    assert load(path).socket == "/from/file.sock"
    assert load(path, environ=env).socket == "/from/env.sock"
    assert load(path, {"socket": "/from/flag.sock"}, environ=env).socket == "/from/flag.sock"
    assert load(path, {"socket": None}, environ=env).socket == "/from/env.sock"  # unset flags do not count
    assert load(path, {"kill_grace": 7}).kill_grace == 7.0
    assert load(path).kill_grace == 3.0
    assert load(path, environ={"MGPU_SOCKET": ""}).socket == "/from/file.sock"


def test_every_option_can_come_from_the_file(tmp_path):
    c = load(write(tmp_path, "\n".join([
        "socket: /s.sock", "state_dir: /state", "fake_gpus: '2:1000'", "max_job_time: '1:00:00'",
        "max_user_priority: 5", "kill_grace: 2.5", "policy: spread", "operators: [alice, bob]",
        "allow_root_jobs: true", "node_name: gpu7", "keep_finished: 50", "max_connections: 64",
        "max_connections_per_user: 8", "listen: 10.1.2.3:9000", "key_file: /k/cluster.key",
        "master: 'gpu1'", "heartbeat_interval: 2", "node_timeout: 7.5", "submit_only: true", "max_requeues: 2", ""])))
    assert c.as_dict() == {
        "socket": "/s.sock", "state_dir": "/state",
        "fake_gpus": [{"index": i, "name": "Fake GPU", "uuid": "GPU-fake-%04d" % i, "memory_mb": 1000,
                       "external_mb": 0} for i in range(2)],
        "max_job_time": 3600, "max_user_priority": 5, "kill_grace": 2.5, "policy": "spread",
        "operators": ("alice", "bob"), "allow_root_jobs": True, "node_name": "gpu7", "keep_finished": 50,
        "max_connections": 64, "max_connections_per_user": 8, "listen": "10.1.2.3:9000",
        "key_file": "/k/cluster.key", "master": "gpu1:8080", "heartbeat_interval": 2.0, "node_timeout": 7.5,
            "submit_only": True, "max_requeues": 2}
    assert set(c.as_dict()) == set(config.OPTIONS)


@pytest.mark.parametrize("overrides,message", [
    ({"listen": "h:0"}, "listen 'h:0': use HOST:PORT with a port from 1 to 65535"),
    ({"master": "h:x"}, "master 'h:x': the port must be a number"),
    ({"listen": "[::1"}, "listen '[::1': a bracketed IPv6 address needs its ']'"),
    ({"heartbeat_interval": "fast"}, "heartbeat_interval must be a number of seconds, not 'fast'"),
    ({"node_timeout": 0}, "node_timeout must be from 0.1 to 86400 seconds"),
    ({"heartbeat_interval": 10, "node_timeout": 5}, "node_timeout (5s) must be longer than heartbeat_interval (10s)"),
])
def test_bad_link_options_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load(overrides=overrides)
    assert caught.value.message == message


def test_addresses_are_normalised_and_the_master_may_come_from_the_environment():
    assert load(overrides={"listen": "[::1]:9000"}).listen == "[::1]:9000"
    assert load(overrides={"listen": "0.0.0.0"}).listen == "0.0.0.0:8080"
    c = load(environ={"MGPU_MASTER_HOST": "10.0.0.9", "MGPU_MASTER_PORT": "9001"})
    assert c.master == "10.0.0.9:9001"
    assert load(overrides={"master": "h:1"}, environ={"MGPU_MASTER_HOST": "x"}).master == "h:1"


def test_operators_may_be_a_comma_or_space_separated_string():
    assert load(overrides={"operators": "alice, bob carol"}).operators == ("alice", "bob", "carol")


@pytest.mark.parametrize("value,seconds", [(30, 30), ("90", 90), ("10:00", 600), ("1-00:00:00", 86400)])
def test_max_job_time_takes_seconds_or_slurm_durations(value, seconds):
    assert load(overrides={"max_job_time": value}).max_job_time == seconds


# ---------------------------------------------------------------------------------------------
# Fake GPUs


def test_fake_gpus_count_and_memory():
    gpus = load(overrides={"fake_gpus": "4:81920"}).fake_gpus
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert all(g["memory_mb"] == 81920 and g["external_mb"] == 0 for g in gpus)
    assert len({g["uuid"] for g in gpus}) == 4


def test_fake_gpus_count_alone_defaults_to_80_gb():
    gpus = load(overrides={"fake_gpus": "2"}).fake_gpus
    assert [(g["index"], g["memory_mb"]) for g in gpus] == [(0, 81920), (1, 81920)]
    assert load(overrides={"fake_gpus": 3}).fake_gpus[2]["index"] == 2
    assert load(overrides={"fake_gpus": "0"}).fake_gpus == []


def test_fake_gpus_as_a_list_with_external_use(tmp_path):
    c = load(write(tmp_path, "fake_gpus:\n"
                             "  - {name: A100, memory_mb: 40960, external_mb: 1024}\n"
                             "  - {memory_mb: 16000, uuid: GPU-x}\n"
                             "  - {memory_mb: 1000, external_mb: 5000}\n"))
    assert c.fake_gpus == [
        {"index": 0, "name": "A100", "uuid": "GPU-fake-0000", "memory_mb": 40960, "external_mb": 1024},
        {"index": 1, "name": "Fake GPU", "uuid": "GPU-x", "memory_mb": 16000, "external_mb": 0},
        {"index": 2, "name": "Fake GPU", "uuid": "GPU-fake-0002", "memory_mb": 1000, "external_mb": 1000},
    ]


# ---------------------------------------------------------------------------------------------
# One line naming the option


@pytest.mark.parametrize("overrides,option", [
    ({"policy": "random"}, "policy"),
    ({"kill_grace": -1}, "kill_grace"),
    ({"kill_grace": "soon"}, "kill_grace"),
    ({"max_job_time": "abc"}, "max_job_time"),
    ({"max_job_time": 0}, "max_job_time"),
    ({"max_job_time": "-10"}, "max_job_time"),
    ({"max_job_time": "1:99:00"}, "max_job_time"),
    ({"fake_gpus": "many"}, "fake_gpus"),
    ({"fake_gpus": "2:lots"}, "fake_gpus"),
    ({"fake_gpus": "-1"}, "fake_gpus"),
    ({"fake_gpus": "2:0"}, "fake_gpus"),
    ({"fake_gpus": [{"name": "no memory"}]}, "fake_gpus[0]"),
    ({"fake_gpus": [5]}, "fake_gpus[0]"),
    ({"fake_gpus": [{"memory_mb": 10}, {"memory_mb": 10, "color": "red"}]}, "fake_gpus[1]"),
    ({"fake_gpus": [{"memory_mb": -5}]}, "fake_gpus[0].memory_mb"),
    ({"fake_gpus": [{"memory_mb": 5, "external_mb": -1}]}, "fake_gpus[0].external_mb"),
    ({"max_user_priority": -1}, "max_user_priority"),
    ({"max_user_priority": "high"}, "max_user_priority"),
    ({"max_user_priority": True}, "max_user_priority"),
    ({"keep_finished": -5}, "keep_finished"),
    ({"operators": 5}, "operators"),
    ({"operators": ["alice", 3]}, "operators"),
    ({"allow_root_jobs": "sure"}, "allow_root_jobs"),
    ({"max_connections": 0}, "max_connections"),
    ({"max_connections": "lots"}, "max_connections"),
    ({"max_connections_per_user": -3}, "max_connections_per_user"),
    ({"max_connections_per_user": 0}, "max_connections_per_user"),
])
def test_bad_values_are_one_line_naming_the_option(overrides, option):
    message = fails(overrides=overrides)
    assert option in message, message


def test_an_unknown_option_in_the_file_names_it_and_the_file(tmp_path):
    path = write(tmp_path, "policy: spread\nkill_grase: 3\n")
    message = fails(path)
    assert "kill_grase" in message and path in message


def test_a_bad_value_in_the_file_is_refused_even_when_a_flag_would_replace_it(tmp_path):
    path = write(tmp_path, "policy: random\n")
    message = fails(path, {"policy": "spread"})
    assert "policy" in message and path in message  # the file is named in errors about its values


def test_a_file_that_is_not_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "policy: spread\nkill_grace: [1, 2\nnode_name: x\n")
    message = fails(path)
    assert path in message and "line 3" in message and "YAML" in message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    for text in ("- policy\n- spread\n", "just a sentence\n", "42\n"):
        message = fails(write(tmp_path, text))
        assert "mapping" in message


def test_a_missing_file_is_one_line(tmp_path):
    path = str(tmp_path / "nope.yaml")
    message = fails(path)
    assert path in message and "cannot read" in message


# ---------------------------------------------------------------------------------------------
# Frozen


def test_config_is_frozen():
    c = load()
    with pytest.raises(AttributeError):
        c.policy = "spread"
    with pytest.raises(AttributeError):
        c.new_option = 1
    assert c.policy == "fill_first"
    as_dict = c.as_dict()
    as_dict["policy"] = "spread"
    assert c.policy == "fill_first"
    assert isinstance(c, Config)


def test_config_options_cannot_be_deleted():
    c = load()
    with pytest.raises(AttributeError):
        del c.policy
    assert c.policy == "fill_first"
