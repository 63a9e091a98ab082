"""Project set-up after the dependencies are installed (``make setup`` runs it).

1. Keep MLflow and DVC quiet: a ``.pth`` file in the virtual environment sets the no-telemetry variables for
   every Python process started from it (``dvc``, ``mlflow ui``, notebooks), not only for ``make`` targets.
2. Put the raw data in place so that ``dvc status`` is clean on a fresh clone: offline first, from the
   byte-identical copy of the example dataset kept in git (``data/example/``); otherwise ``dvc pull`` from the
   default remote (e.g. DagsHub). The hash is checked against ``data/raw.dvc`` and the file committed to the
   DVC cache, so that ``dvc checkout`` and ``dvc push`` work. A project without ``data/raw.dvc`` (generated without
   the example dataset) has nothing to restore yet: its user adds a CSV with ``dvc add`` (see README).
3. Make ``dvc plots show`` work offline: DVC's page loads Vega from a CDN; ``.dvc/config`` points
   ``plots.html_template`` at ``.dvc/tmp/plots_offline.html``, written here with the Vega libraries inlined
   (from vl-convert-python's bundle).
4. Create the local MLflow store (``mlflow.db``, when it is the tracking store and does not exist yet): its schema
   migrations take ~2 s, paid here once instead of by the first ``dvc repro``.
"""

from __future__ import annotations

import argparse
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
# DVC's own page (dvc_render.html.PAGE_HTML) with the Vega scripts inlined instead of loaded from a CDN.
PLOTS_PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <script>%s</script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
EXAMPLE_DIR = Path("data/example")
RAW_DVC = Path("data") / "raw.dvc"


def write_quiet_pth(site_packages: Path | None = None) -> Path:
    """Write the ``.pth`` that sets :data:`QUIET_ENV` (without overriding values the user set) at interpreter start."""
    site = site_packages or Path(sysconfig.get_paths()["purelib"])
    settings = "; ".join(f"os.environ.setdefault({k!r}, {v!r})" for k, v in QUIET_ENV.items())
    path = site / PTH_NAME
    path.write_text(f"import os; {settings}\n", encoding="utf-8")
    return path


def write_offline_plots_template(path: Path = PLOTS_TEMPLATE) -> Path:
    """Write DVC's plots page with the Vega, Vega-Lite and Vega-Embed libraries inlined (no CDN)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle()  # defines window.vegaEmbed, which DVC's plot divs call
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLOTS_PAGE % bundle.replace("</script", "<\\/script"), encoding="utf-8")
    return path


def tracked_outputs(dvc_file: Path) -> list[tuple[Path, str]]:
    """(workspace path, md5) of each file output of a ``.dvc`` file."""
    outs = load_yaml(dvc_file.read_text(encoding="utf-8"))["outs"]
    return [(dvc_file.parent / out["path"], out["md5"]) for out in outs]


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)


def restore_raw_data(dvc_file: Path = RAW_DVC, example_dir: Path = EXAMPLE_DIR) -> str:
    """Make the outputs of ``dvc_file`` present and committed to the cache; return how it was done."""
    outs = tracked_outputs(dvc_file)
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
    # Put it in the cache too, so `dvc checkout` can bring it back and `dvc push` can send it.
    committed = _dvc("commit", "--force", "--quiet", str(dvc_file))
    if committed.returncode != 0:
        raise SystemExit(f"error: dvc commit {dvc_file} failed: {committed.stderr.strip()}")
    return how


def prepare_local_store(root: Path | None = None) -> str | None:
    """Create the local SQLite MLflow store if it is the one in use and missing (aside, then moved into place under
    the store's lock); returns what was done, or None when there was nothing to do."""
    import os

    from segmentation.tracking.settings import TrackingSettings, project_root
    from segmentation.tracking.store import MlflowClientFor, local_store_lock, quiet_mlflow

    root = root or project_root()
    uri = TrackingSettings.resolve(root).local_uri
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists():
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
    """CLI: ``python -m segmentation.tools.bootstrap``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-data", action="store_true", help="do not restore the raw data")
    parser.add_argument("--skip-pth", action="store_true", help="do not write the no-telemetry .pth")
    parser.add_argument("--skip-store", action="store_true", help="do not create the local MLflow store")
    args = parser.parse_args(argv)
    if not args.skip_pth:
        pth = write_quiet_pth()
        print(f"bootstrap: telemetry off for this environment ({pth.name})")
    print(f"bootstrap: offline page for `dvc plots show`: {write_offline_plots_template()}")
    if not args.skip_store and (done := prepare_local_store()):
        print(f"bootstrap: local MLflow store {done}")
    if args.skip_data:
        return
    if RAW_DVC.is_file():
        print(f"bootstrap: raw data {restore_raw_data()}")
    else:
        print(
            f"bootstrap: no {RAW_DVC}, no data to restore; add your CSV (dvc add data/raw/<file>.csv) "
            "and set preprocess.data in params.yaml (README: Bring your own data)"
        )


if __name__ == "__main__":
    main()
