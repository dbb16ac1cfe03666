"""chunkmill's settings: Dask's config when any source of it exists, the shipped values
without importing Dask otherwise; sizes parsed as Dask parses them."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.config
import dask.utils
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import config
from pipeline.errors import UsageError

_UNITS = sorted(dask.utils.byte_sizes) + ["Mb", "mIb", "KB", "x", "MiBs", "bytes"]


def _dask_or_error(text: str) -> int | str:
    try:
        return dask.utils.parse_bytes(text)
    except (ValueError, OverflowError):
        return "error"


def _ours_or_error(text: str) -> int | str:
    try:
        return config.parse_size(text)
    except UsageError:
        return "error"


@given(number=st.one_of(st.integers(-10**6, 10**12).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["", ".5", "1e3", "1_000", "0x10", "-", "1.5.2"])),
       space=st.sampled_from(["", " ", "  "]), unit=st.sampled_from(_UNITS))
def test_sizes_parse_as_dask_parses_them(number: str, space: str, unit: str) -> None:
    text = f"{number}{space}{unit}"
    assert _ours_or_error(text) == _dask_or_error(text)


@given(st.text(max_size=12))
def test_any_text_parses_as_dask_parses_it(text: str) -> None:
    assert _ours_or_error(text) == _dask_or_error(text)


def test_a_bad_size_names_itself() -> None:
    with pytest.raises(UsageError, match="not a size: '12 parsecs'"):
        config.parse_size("12 parsecs")
    assert config.parse_size(1.9e3) == 1900


@pytest.mark.parametrize("env", [{}, {"DASK_CONFIG": "/somewhere/else"},
                                 {"DASK_ROOT_CONFIG": "/opt/dask"},
                                 {"DASK_CONFIG": "/etc/dask"}])
def test_the_paths_searched_are_dasks(monkeypatch, env) -> None:
    for name in ("DASK_CONFIG", "DASK_ROOT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.dask_config_paths() == dask.config._get_paths()


def test_shipped_values_are_what_dask_config_holds() -> None:
    """The values read without Dask are the ones Dask's config gives when nobody set any."""
    shipped = config._shipped()["chunkmill"]
    for section, values in shipped.items():
        for key, value in values.items():
            assert config.dask_config().get(f"chunkmill.{section}.{key}",
                                            config=config._shipped()) == value


@pytest.mark.parametrize("source", ["file", "environment", "none"])
def test_every_source_of_dask_settings_reaches_a_run(tmp_path, source) -> None:
    """A YAML file in ~/.config/dask or a DASK_CHUNKMILL__ variable decides the codec of a
    small job (which otherwise does not import Dask at all)."""
    (tmp_path / "in.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(100)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["HOME"] = str(tmp_path)
    if source == "file":
        (tmp_path / ".config" / "dask").mkdir(parents=True)
        (tmp_path / ".config" / "dask" / "mine.yaml").write_text(
            "chunkmill:\n  ingest:\n    compression: gzip\n")
    elif source == "environment":
        env["DASK_CHUNKMILL__INGEST__COMPRESSION"] = "gzip"
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest",
                          str(tmp_path / "in.csv"), "--out", str(tmp_path / "o"), "-q"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (data,) = [p for p in (tmp_path / "o").rglob("*.parquet")
               if not any(part.startswith("_") for part in p.relative_to(tmp_path / "o").parts)]
    codec = pq.ParquetFile(data).metadata.row_group(0).column(0).compression
    assert codec == ("ZSTD" if source == "none" else "GZIP")
