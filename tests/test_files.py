"""Tables between stages: Parquet (the pipeline's) and CSV read and checked alike; the fast CSV writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation.errors import UserError
from segmentation.files import StageOutputs, read_csv, read_matrix, write_csv, write_parquet


def test_parquet_round_trip_is_exact_and_byte_stable(tmp_path):
    df = pd.DataFrame({"ID": [5524, 2174, 4141], "PC1": [0.1, -1e-300, 1 / 3], "PC2": [np.pi, 2.5, -7.0]})
    df.attrs["segmentation_csv"] = object()  # what load_csv leaves on a frame: not written
    write_parquet(tmp_path / "a.parquet", df)
    write_parquet(tmp_path / "b.parquet", df)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    back = read_matrix(tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(back, df)


def test_a_bad_value_in_a_parquet_matrix_names_the_row(tmp_path):
    df = pd.DataFrame({"ID": [1, 2, 3], "PC1": [0.1, np.nan, 0.3]})
    write_parquet(tmp_path / "m.parquet", df)
    with pytest.raises(UserError) as err:
        read_matrix(tmp_path / "m.parquet")
    assert str(err.value) == (
        f"{tmp_path / 'm.parquet'}: column PC1 has a blank on row 2 (the model matrix must be finite numbers); "
        "rebuild it: dvc repro -f -s preprocess"
    )


def test_a_file_that_is_not_parquet_says_how_to_rebuild_it(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"ID,PC1\n1,2\n")
    with pytest.raises(UserError, match=r"m.parquet: not a Parquet file written by the pipeline; rebuild it: "):
        read_csv(tmp_path / "m.parquet", stage="preprocess")


@pytest.mark.parametrize("rows", [10, 200_000])
def test_csv_writer_gives_pandas_bytes(tmp_path, rows):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"ID": rng.integers(-(10**12), 10**12, rows), "cluster": rng.integers(0, 9, rows)})
    write_csv(tmp_path / "fast.csv", df)
    df.to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\n")
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_write_table_picks_the_format_by_suffix(tmp_path):
    df = pd.DataFrame({"ID": [1, 2], "x": [0.5, 1.5]})
    with StageOutputs() as out:
        out.write_table(tmp_path / "t.parquet", df)
        out.write_table(tmp_path / "t.csv", df)
        out.commit()
    assert (tmp_path / "t.parquet").read_bytes()[:4] == b"PAR1"
    assert (tmp_path / "t.csv").read_text() == "ID,x\n1,0.5\n2,1.5\n"


def parts_of(df: pd.DataFrame, folder, sizes) -> None:
    """``df`` written as a partitioned table (the Dask engine's layout): one part per slice of ``sizes`` rows."""
    start = 0
    for number, size in enumerate(sizes):
        write_parquet(folder / f"part.{number:05d}.parquet", df.iloc[start : start + size])
        start += size


def test_a_partitioned_table_reads_as_one_in_its_parts_order(tmp_path):
    df = pd.DataFrame({"ID": range(25), "PC1": np.linspace(0, 1, 25)})
    folder = tmp_path / "m.parquet"
    folder.mkdir()
    parts_of(df, folder, [3, 0, 7, 2, 1, 1, 1, 1, 1, 1, 1, 6])  # 12 parts: part.00010 after part.00009
    pd.testing.assert_frame_equal(read_matrix(folder), df)
    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty.parquet: not a Parquet file written by the pipeline"):
        read_csv(empty, stage="preprocess")


def test_a_folder_output_replaces_a_file_and_a_file_replaces_it_back(tmp_path):
    from segmentation.files import temp_dir_beside

    target = tmp_path / "t.parquet"
    df = pd.DataFrame({"ID": [1, 2, 3], "x": [0.5, 1.5, 2.5]})
    write_parquet(target, df.iloc[:1])
    with StageOutputs() as out:
        folder = temp_dir_beside(target)
        parts_of(df, folder, [2, 1])
        out.adopt(target, folder)
        out.write_json(tmp_path / "m.json", {"rows": 3})
        out.commit()
    assert target.is_dir() and sorted(p.name for p in target.iterdir()) == ["part.00000.parquet", "part.00001.parquet"]
    pd.testing.assert_frame_equal(read_csv(target), df)
    with StageOutputs() as out:  # the local engine again: a file where the folder was
        out.write_table(target, df)
        out.commit()
    assert target.is_file()
    pd.testing.assert_frame_equal(read_csv(target), df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.parquet"]  # no temporary or backup left


def test_a_failed_move_leaves_every_file_whole(tmp_path, monkeypatch):
    """Each output is renamed into place whole: one that cannot be moved keeps its earlier content, and no temporary
    file is left."""
    import os

    from segmentation.files import temp_dir_beside

    target, other = tmp_path / "t.parquet", tmp_path / "m.json"
    df = pd.DataFrame({"ID": [1, 2], "x": [0.5, 1.5]})
    target.mkdir()
    parts_of(df, target, [2])
    other.write_text("{}\n")
    real_replace = os.replace

    def failing(src, dst):
        if str(dst) == str(other):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with StageOutputs() as out:
        folder = temp_dir_beside(target)
        parts_of(df.iloc[:1], folder, [1])
        out.adopt(target, folder)
        out.write_json(other, {"rows": 1})
        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(UserError, match=r"m.json: cannot replace \(No space left on device\)$"):
            out.commit()
        monkeypatch.setattr(os, "replace", real_replace)
    assert target.is_dir()
    pd.testing.assert_frame_equal(read_csv(target), df.iloc[:1])  # moved before the failure: the new one, whole
    assert other.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.parquet"]
