"""The Dask engine's tables on object storage (``preprocess.dask.tables``, :mod:`segmentation.engines.dask.store`): the
workers write the parts to moto's S3 server on 127.0.0.1 (the fixtures of tests/test_dask_sources.py: IAM
authentication on, the DVC remote's key), the stage writes manifests at the dvc.yaml paths, train and evaluate read
the parts back through them.

Marked ``dask``; the ``dvc repro`` test also ``pipeline``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

# Without the dask extra (`make setup` installs none) the whole file is one skip line: make setup EXTRAS=dask.
pytest.importorskip("dask", reason="the dask extra is not installed: make setup EXTRAS=dask")

import test_dask_sources as sources
from segmentation.engines.dask.params import DaskParams
from segmentation.errors import UserError
from test_dask_sources import BUCKET, PROFILE, STAGE_CLUSTER, files_holding

# The fixtures of tests/test_dask_sources.py, used here too: moto's S3 server on 127.0.0.1 (IAM authentication on),
# a LocalCluster of two worker processes, the local engine's outputs of the sample.
s3, client, local = sources.s3, sources.client, sources.local

pytestmark = pytest.mark.dask

TABLES = "remote://origin/tables"  # the DVC remote `origin` of S3Store.project (moto's bucket)
# Train searches k on a seeded sample of this many of the sample's 400 kept rows, then fits on all rows (on Dask:
# dask-ml's KMeans): the Dask engine needs a sample size. Set for both engines, as tests/test_dask_pipeline.py does.
SEARCH_SAMPLE = 200


def parts_of(manifest: dict) -> list[str]:
    """The bucket keys of a manifest's parts."""
    prefix = "remote://origin/"
    return [p["url"].removeprefix(prefix) for p in manifest["parts"]]


def store_params(params, **dask):
    return params.model_copy(update={"engine": "dask", "dask": DaskParams(blocksize="8kB", tables=TABLES, **dask)})


def test_tables_param_takes_a_prefix_on_s3_or_a_dvc_remote():
    from pydantic import ValidationError

    assert DaskParams().tables is None
    assert DaskParams(tables="s3://bucket/tables").tables == "s3://bucket/tables"
    for bad in ("s3://bucket", "/local/tables", "gs://b/t", "remote://origin/t/*", "remote:///t"):
        with pytest.raises(ValidationError, match="tables"):
            DaskParams(tables=bad)


def preprocess_to_store(client, params, out):
    """The preprocess engine with ``tables`` set: the two manifests written as the stage writes them."""
    from segmentation.core.transform import input_columns
    from segmentation.engines.dask.engine import preprocess_on_dask

    out.mkdir(exist_ok=True)
    features, matrix = out / "features.parquet", out / "matrix.parquet"
    result = preprocess_on_dask(client, params, [*input_columns(params), *PROFILE], PROFILE, features, matrix)
    assert result.features_dir is None and result.manifests is not None
    features.write_text(result.manifests[0], encoding="utf-8")
    matrix.write_text(result.manifests[1], encoding="utf-8")
    return features, matrix


def test_the_workers_write_the_tables_to_the_store_and_read_them_back_through_manifests(
    client, s3, local, preprocess_params, tmp_path, monkeypatch
):
    """Manifests (parts' URLs, sizes, ETags, md5s, rows, schema; no secret) at the dvc.yaml paths; the tables read
    back are the local engine's; a second run writes under a new prefix and leaves the first run's parts; a part
    changed on the storage is one error line."""
    from segmentation.engines.dask import tables as dask_tables

    monkeypatch.chdir(s3.project(tmp_path / "project"))
    params = store_params(preprocess_params)
    features, matrix = preprocess_to_store(client, params, tmp_path / "one")
    first = json.loads(features.read_text())
    assert first["format"] == "segmentation-dask-tables" and first["rows"] == len(local.features)
    assert first["prefix"].startswith(f"{TABLES}/") and first["prefix"].endswith("/features")
    assert list(first["schema"]) == list(local.features.columns)
    assert len(first["parts"]) > 1 and all(p["etag"] and len(p["md5"]) == 32 and p["size"] for p in first["parts"])
    for text in (features.read_text(), matrix.read_text()):
        assert s3.secret not in text and s3.key_id not in text

    table = dask_tables.load(client, features, stage="preprocess")
    got = dask_tables.take(client, table.frames, table.rows, None)
    pd.testing.assert_frame_equal(got, local.features)
    loaded = dask_tables.load_matrix(client, matrix)
    values = dask_tables.take(client, loaded.blocks, loaded.table.rows, None)
    np.testing.assert_allclose(values, local.matrix.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-9)

    preprocess_to_store(client, params, tmp_path / "two")
    second = json.loads((tmp_path / "two" / "features.parquet").read_text())
    assert second["prefix"] != first["prefix"]
    store = s3.client()
    for key in parts_of(first):
        store.head_object(Bucket=BUCKET, Key=key)  # the first run's parts are still there

    key = parts_of(first)[1]
    body = store.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    store.put_object(Bucket=BUCKET, Key=key, Body=body + b" ")
    with pytest.raises(UserError) as found:
        dask_tables.load(client, features, stage="preprocess")
    message = str(found.value)
    assert "\n" not in message and s3.secret not in message
    assert message.startswith(f"{features}: remote://origin/{key} changed since the manifest was written"), message
    assert message.endswith("rebuild it: dvc repro -f -s preprocess")

    s3.project(tmp_path / "project", secret="wrong")  # the DVC remote's key revoked: reading is one line too
    with pytest.raises(UserError) as found:
        dask_tables.load(client, matrix, stage="preprocess")
    message = str(found.value)
    assert message.startswith(f"{matrix}: remote://origin/tables/") and "access denied" in message, message
    assert "\n" not in message


def test_a_store_the_workers_cannot_write_is_one_line_and_leaves_nothing(
    client, s3, preprocess_params, tmp_path, monkeypatch
):
    monkeypatch.chdir(s3.project(tmp_path / "project", secret="wrong"))
    with pytest.raises(UserError) as found:
        preprocess_to_store(client, store_params(preprocess_params), tmp_path / "out")
    message = str(found.value)
    assert message.startswith(f"params.yaml: preprocess.dask.tables: {TABLES}/"), message
    assert "access denied" in message and "\n" not in message
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.pipeline
def test_dvc_repro_with_tables_on_the_store_gives_the_local_segments_and_keeps_old_tables(
    client, s3, tmp_path, monkeypatch
):
    """`dvc repro` on the local engine, then on Dask with ``tables`` on moto (the DVC remote's key in
    .dvc/config.local): manifests at the dvc.yaml paths, the same k_best, the same customers' labels; the secret in
    no file but config.local. A data change: `dvc repro` writes new tables; the older commit's tables are intact
    and, after `git checkout` + `dvc checkout` of that commit, read back."""
    from sklearn.metrics import adjusted_rand_score

    from pipeline_helpers import copy_project, paths, project_env, run, use_fixture_data
    from segmentation.engines.dask import tables as dask_tables

    root = copy_project(tmp_path / "project")
    # The stages reach the module's LocalCluster by its address, as a real cluster is reached (and no stage pays
    # for starting one): its workers write and read the tables on the store, not in the project folder.
    env = project_env(tmp_path, DASK_SCHEDULER_ADDRESS=client.scheduler.address)
    use_fixture_data(root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["search_sample_size"] = SEARCH_SAMPLE
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = paths(root)
    run(["dvc", "repro"], root, env)
    local_k = json.loads((root / p["train_metrics"]).read_text())["k_best"]
    local_segments = pd.read_csv(root / p["segments"])

    run(["dvc", "remote", "add", "origin", f"s3://{BUCKET}"], root, env)
    run(["dvc", "remote", "modify", "origin", "endpointurl", s3.endpoint], root, env)
    run(["dvc", "remote", "modify", "--local", "origin", "access_key_id", s3.key_id], root, env)
    run(["dvc", "remote", "modify", "--local", "origin", "secret_access_key", s3.secret], root, env)
    params["preprocess"]["engine"] = "dask"
    params["preprocess"]["dask"] = {"blocksize": STAGE_CLUSTER["blocksize"], "tables": TABLES}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro"], root, env)
    assert "partition(s) on Dask" in proc.stdout
    manifest = json.loads((root / p["features"]).read_text())
    assert manifest["prefix"].startswith(f"{TABLES}/")
    assert json.loads((root / p["matrix"]).read_text())["rows"] == manifest["rows"]
    assert json.loads((root / p["train_metrics"]).read_text())["k_best"] == local_k
    segments = pd.read_csv(root / p["segments"])
    assert segments.iloc[:, 0].equals(local_segments.iloc[:, 0])
    assert adjusted_rand_score(local_segments["cluster"], segments["cluster"]) >= 0.99
    assert files_holding(root, s3.secret) == []
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "dask engine, tables on the store"], root, env)

    data = root / params["preprocess"]["data"]["path"]
    data.write_text("".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    run(["dvc", "add", "--quiet", str(data.relative_to(root))], root, env)
    run(["dvc", "repro", "preprocess"], root, env)
    assert json.loads((root / p["features"]).read_text())["prefix"] != manifest["prefix"]
    store = s3.client()
    for key in parts_of(manifest):
        store.head_object(Bucket=BUCKET, Key=key)

    run(["git", "checkout", "-q", "HEAD", "--", "."], root, env)  # the index too: DVC stages what it changes
    run(["dvc", "checkout", "--quiet"], root, env)
    assert json.loads((root / p["features"]).read_text()) == manifest
    monkeypatch.chdir(root)  # remote://origin resolves with this project's .dvc/config(.local)
    table = dask_tables.load(client, p["features"], stage="preprocess")
    assert table.total == manifest["rows"]
