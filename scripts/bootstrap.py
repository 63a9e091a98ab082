"""Project set-up after the dependencies are installed (``make setup``): no telemetry, an offline plots page, the
local MLflow store and the raw data in place (from ``data/example/`` when it holds it, else ``dvc pull``)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from segmentation.pipeline import load_yaml
from segmentation.tracking.lineage import file_md5

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
PTH_NAME = "segmentation_no_telemetry.pth"
PLOTS_TEMPLATE = Path(".dvc/tmp/plots_offline.html")  # `plots.html_template` in .dvc/config (relative to .dvc/)
EXAMPLE_DIR = Path("data/example")
RAW_DVC = Path("data") / "raw.dvc"


def write_quiet_pth(site_packages: Path | None = None) -> Path:
    """Write the ``.pth`` that sets :data:`QUIET_ENV` (unless set) in every Python of this environment: ``dvc``,
    ``mlflow ui`` and notebooks too, not only ``make`` targets."""
    settings = "; ".join(f"os.environ.setdefault({k!r}, {v!r})" for k, v in QUIET_ENV.items())
    path = (site_packages or Path(sysconfig.get_paths()["purelib"])) / PTH_NAME
    path.write_text(f"import os; {settings}\n", encoding="utf-8")
    return path


def write_offline_plots_template(path: Path = PLOTS_TEMPLATE) -> Path:
    """Write DVC's plots page with the Vega, Vega-Lite and Vega-Embed libraries inlined instead of from a CDN."""
    import vl_convert
    from dvc_render.html import PAGE_HTML

    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")  # defines window.vegaEmbed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE_HTML.replace("{scripts}", f"<script>{bundle}</script>") + "\n", encoding="utf-8")
    return path


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)


def restore_raw_data(dvc_file: Path = RAW_DVC, example_dir: Path = EXAMPLE_DIR) -> str:
    """Make the outputs of ``dvc_file`` present (hashes checked) and committed to the DVC cache, so that ``dvc
    checkout`` and ``dvc push`` work; return how it was done."""
    outs = [(dvc_file.parent / out["path"], out["md5"]) for out in load_yaml(dvc_file.read_text("utf-8"))["outs"]]
    missing = [(p, md5) for p, md5 in outs if not (p.is_file() and file_md5(p) == md5)]
    how = "already in place"
    if missing:
        # Offline first: the copy kept in git; `dvc pull` only for what it does not hold.
        copies = [(p, example_dir / p.name, md5) for p, md5 in missing]
        if all(c.is_file() and file_md5(c) == md5 for _, c, md5 in copies):
            for path, copy, _ in copies:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(copy, path)
            how = f"restored from {example_dir}/"
        else:
            pulled = _dvc("pull", "--quiet", str(dvc_file))
            if pulled.returncode != 0 or not all(p.is_file() and file_md5(p) == md5 for p, md5 in missing):
                raise SystemExit(
                    f"error: {dvc_file}: data missing, no matching copy in {example_dir}/ and `dvc pull` failed "
                    f"({pulled.stderr.strip() or 'no remote configured'})"
                )
            return "pulled from the default DVC remote"
    committed = _dvc("commit", "--force", "--quiet", str(dvc_file))
    if committed.returncode != 0:
        raise SystemExit(f"error: dvc commit {dvc_file} failed: {committed.stderr.strip()}")
    return how


def prepare_local_store(root: Path | None = None) -> str | None:
    """Create the local SQLite MLflow store when it is the one in use and missing (its ~2 s of migrations paid here,
    not by the first ``dvc repro``): aside, then moved into place under the store's lock. None: nothing to do."""
    from segmentation.tracking.settings import TrackingSettings, project_root
    from segmentation.tracking.store import MlflowClientFor, local_store_lock, quiet_mlflow

    root = root or project_root()
    uri = TrackingSettings.resolve(root).local_uri
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or db.exists():
        return None
    fresh = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        with quiet_mlflow():
            MlflowClientFor(f"sqlite:///{fresh}").search_experiments(max_results=1)
        with local_store_lock(root):
            if db.exists():
                return None
            os.replace(fresh, db)
    finally:
        fresh.unlink(missing_ok=True)
    return f"created {os.path.relpath(db, root)}"


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python scripts/bootstrap.py [--skip-data] [--skip-pth]`` (make setup)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-data", action="store_true", help="do not restore the raw data")
    parser.add_argument("--skip-pth", action="store_true", help="do not write the no-telemetry .pth")
    args = parser.parse_args(argv)
    if not args.skip_pth:
        print(f"bootstrap: telemetry off for this environment ({write_quiet_pth().name})")
    print(f"bootstrap: offline page for `dvc plots show`: {write_offline_plots_template()}")
    if done := prepare_local_store():
        print(f"bootstrap: local MLflow store {done}")
    if args.skip_data:
        return
    if RAW_DVC.is_file():
        print(f"bootstrap: raw data {restore_raw_data()}")
    else:  # a project generated without the example dataset: its user adds a CSV
        print(
            f"bootstrap: no {RAW_DVC}, no data to restore; add your CSV (dvc add data/raw/<file>.csv) "
            "and set preprocess.data in params.yaml (README: Bring your own data)"
        )


if __name__ == "__main__":
    main()
