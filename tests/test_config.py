"""Configuration (``repartir/config.py``): keyword arguments first, ``REPARTIR_*`` variables
second, defaults last -- checked for every setting the module's table lists.

- the table names every field of ``Config`` and no other; each setting has a variable or the
  table says ``--`` (and README.md and docs/index.md name those exceptions);
- each variable, set to a value other than the default, reaches ``resolve()``'s result;
- each keyword of ``init()`` wins over its variable.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from repartir import config
from repartir.config import Config, resolve
from rtsupport import REPO_ROOT

MiB = 1 << 20


def table() -> dict[str, str | None]:
    """setting -> variable (``None`` for ``--``) from the module docstring's table."""
    rows = {}
    for line in config.__doc__.splitlines():
        m = re.match(r"``(\w+)``\s+(``(REPARTIR_\w+)``|--)\s", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


#: A value other than the default for each setting with a variable: (text, expected field).
ENV_VALUES = {
    "num_cpus": ("3", 3),
    "num_gpus": ("2", 2.0),
    "object_store_memory": (str(96 * MiB), 96 * MiB),
    "inline_threshold": ("4096", 4096),
    "max_workers": ("11", 11),
    "spin_us": ("0", 0),
    "temp_dir": ("/tmp/repartir-config-test", "/tmp/repartir-config-test"),
    "shm_dir": (None, None),  # a real directory: tmp_path (below)
    "spill_dir": ("/tmp/repartir-spill-config-test", "/tmp/repartir-spill-config-test"),
    "deque_capacity": ("64", 64),
    "inbox_bytes": (str(2 * MiB), 2 * MiB),
    "max_actors": ("5", 5),
    "log_to_driver": ("0", False),
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in table().values():
        if name:
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_table_lists_every_setting():
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(table()) == fields, (set(table()) ^ fields)


def test_settings_without_a_variable_are_named_where_the_docs_speak_of_variables():
    without = [name for name, var in table().items() if var is None]
    claim = "every setting has one" if not without else (
        "every setting but " + " and ".join(f"`{n}`" for n in without) + " has one")
    docs = {"README.md": (Path(REPO_ROOT) / "README.md").read_text(),
            "docs/index.md": (Path(REPO_ROOT) / "docs/index.md").read_text(),
            "repartir/config.py": config.__doc__.replace("``", "`")}
    for doc, text in docs.items():
        assert claim in " ".join(text.split()), f"{doc} must say: {claim}"


@pytest.mark.parametrize("setting", sorted(ENV_VALUES))
def test_each_variable_reaches_the_configuration(clean_env, tmp_path, setting):
    var = table()[setting]
    assert var, f"{setting} has no variable in the table"
    text, expected = ENV_VALUES[setting]
    if setting == "shm_dir":
        text = expected = str(tmp_path)
    assert getattr(resolve(), setting) != expected, "pick a value other than the default"
    clean_env.setenv(var, text)
    assert getattr(resolve(), setting) == expected


def test_keywords_win_over_variables(clean_env):
    clean_env.setenv("REPARTIR_NUM_CPUS", "3")
    clean_env.setenv("REPARTIR_NUM_GPUS", "2")
    clean_env.setenv("REPARTIR_OBJECT_STORE_MEMORY", str(96 * MiB))
    cfg = resolve(num_cpus=1, num_gpus=1, object_store_memory=80 * MiB)
    assert (cfg.num_cpus, cfg.num_gpus, cfg.object_store_memory) == (1, 1.0, 80 * MiB)
    # and init() passes its keywords through (``resources`` has no variable)
    cfg = resolve(num_cpus=2, resources={"licence": 2})
    assert cfg.num_cpus == 2 and cfg.resources == (("licence", 2.0),)


def test_init_keywords_win_over_variables_in_a_session(clean_env, no_session):
    import repartir

    clean_env.setenv("REPARTIR_NUM_CPUS", "2")
    clean_env.setenv("REPARTIR_OBJECT_STORE_MEMORY", str(96 * MiB))
    info = repartir.init(num_cpus=1, object_store_memory=80 * MiB)
    try:
        assert info["num_cpus"] == 1 and info["object_store_memory"] == 80 * MiB
        assert repartir.cluster_resources()["CPU"] == 1.0
    finally:
        repartir.shutdown()
