"""The example config shipped as /etc/mgpu/mgpu.yaml (build-config/mgpu.yaml) loads as it is,
documents every option of mgpu.config.OPTIONS, and a typo in it is reported by name."""

import os
import re

import pytest

from mgpu import config

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "build-config", "mgpu.yaml")


def read_example():
    with open(EXAMPLE, encoding="utf-8") as handle:
        return handle.read()


def test_example_loads_as_shipped_and_changes_nothing():
    loaded = config.load(EXAMPLE, uid=0, environ={})
    defaults = config.load(None, uid=0, environ={})
    assert loaded.source == EXAMPLE
    assert loaded.as_dict() == defaults.as_dict()


def test_every_option_is_in_the_example():
    text = read_example()
    missing = [name for name in config.OPTIONS
               if not re.search(r"^#?\s*%s:" % re.escape(name), text, re.MULTILINE)]
    assert not missing, "build-config/mgpu.yaml does not show option(s) %s" % ", ".join(missing)


def test_every_option_shown_in_the_example_loads_when_uncommented(tmp_path):
    # The commented examples are valid values: uncomment the first line of each option.
    text = read_example()
    uncommented, seen = [], set()
    for line in text.splitlines():
        match = re.match(r"^#(\w+):\s*\S", line)
        if match and match.group(1) in config.OPTIONS and match.group(1) not in seen:
            seen.add(match.group(1))
            uncommented.append(line[1:])
    without_example = sorted(set(config.OPTIONS) - seen)
    assert not without_example, (
        "give each option a one-line commented example ('#name: value') in "
        "build-config/mgpu.yaml: missing for %s" % ", ".join(without_example))
    path = tmp_path / "mgpu.yaml"
    path.write_text("\n".join(uncommented) + "\n", encoding="utf-8")
    loaded = config.load(str(path), uid=0, environ={})
    for line in uncommented:
        name = line.split(":", 1)[0]
        assert getattr(loaded, name) is not None, name


def test_a_typo_in_a_copy_names_the_key(tmp_path):
    path = tmp_path / "mgpu.yaml"
    path.write_text(read_example() + "\nmax_job_tme: 4:00:00\n", encoding="utf-8")
    with pytest.raises(config.ConfigError) as raised:
        config.load(str(path), uid=0, environ={})
    assert "max_job_tme" in str(raised.value.message)
    assert str(path) in raised.value.message
