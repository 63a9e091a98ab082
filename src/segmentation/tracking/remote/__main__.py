"""``python -m segmentation.tracking.remote {dagshub,show,sync}``: ``make dagshub``, ``make remote``, ``make sync``.

``dagshub`` makes DVC remote ``origin`` DagsHub's storage (``https://dagshub.com/O/R.dvc``, or with ``--s3`` its S3
endpoint), with ``DAGSHUB_USER_TOKEN`` in ``.dvc/config.local`` only, and sets ``dagshub_owner``/``dagshub_repo`` in
pyproject.toml so that MLflow tracks to ``https://dagshub.com/O/R.mlflow``. Nothing here talks to DagsHub
(``DAGSHUB_CLIENT_HOST`` points every URL elsewhere); every URL printed is redacted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from segmentation.errors import UserError, stage_entrypoint
from segmentation.tracking.remote import record_kept_runs, sync
from segmentation.tracking.settings import (
    TrackingSettings,
    dagshub_url,
    project_config,
    project_root,
    redact_uri,
)
from segmentation.tracking.store import PENDING_DIR

REMOTE_NAME = "origin"
TOKEN_ENV = "DAGSHUB_USER_TOKEN"
# How `make dagshub` hands over OWNER, REPO and S3: through the environment, never through a command line.
OWNER_ENV, REPO_ENV, S3_ENV = "SEGMENTATION_DAGSHUB_OWNER", "SEGMENTATION_DAGSHUB_REPO", "SEGMENTATION_DAGSHUB_S3"
USAGE = "usage: make dagshub OWNER=<user or org> REPO=<repo> [S3=1]"
# DagsHub names (copier.yml's rule): letters, digits, '-', '_' and '.', starting with a letter or a digit, no '..'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SHOWN_CHARS = 60  # a hostile value is echoed in the error, truncated


def check_name(value: str, what: str, kind: str) -> str:
    """Return ``value`` if it is a valid DagsHub ``kind`` name, else fail naming ``what`` (OWNER, --repo...)."""
    if NAME.fullmatch(value) and ".." not in value:
        return value
    shown = repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")
    raise UserError(
        f"{what} {shown}: not a DagsHub {kind} name (letters, digits, '-', '_' and '.', starting with a letter or "
        "a digit, no '..')"
    )


def set_project_dagshub(root: Path, owner: str, repo: str) -> None:
    """Write ``dagshub_owner``/``dagshub_repo`` into ``[tool.segmentation]``, keeping the file's formatting."""
    import tomlkit

    path = root / "pyproject.toml"
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    table = doc.setdefault("tool", tomlkit.table()).setdefault("segmentation", tomlkit.table())
    table["dagshub_owner"], table["dagshub_repo"] = owner, repo
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def configure_dvc_remote(root: Path, owner: str, repo: str, use_s3: bool, endpoint: str | None) -> dict[str, str]:
    """Make ``origin`` the default DVC remote on DagsHub, credentials only in ``.dvc/config.local``; returns what
    was configured (no secrets)."""
    from dvc.repo import Repo

    token = os.environ.get(TOKEN_ENV)
    if use_s3:
        remote = {"url": f"s3://{repo}", "endpointurl": endpoint or dagshub_url("api/v1/repo-buckets/s3", owner, "")}
        secrets = {"access_key_id": token, "secret_access_key": token} if token else {}
    else:
        remote = {"url": endpoint or dagshub_url(owner, repo, ".dvc"), "auth": "basic"}
        secrets = {"user": os.environ.get("DAGSHUB_USERNAME") or owner, "password": token} if token else {}
    with Repo(str(root)) as dvc_repo:
        with dvc_repo.config.edit("repo") as conf:
            conf["remote"][REMOTE_NAME] = remote
            conf["core"]["remote"] = REMOTE_NAME
        with dvc_repo.config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = secrets
    return {**remote, "credentials": ".dvc/config.local" if token else f"none (set {TOKEN_ENV} and re-run)"}


def describe(root: Path) -> list[str]:
    """Lines describing the effective remote and tracking configuration (never a secret)."""
    from dvc.config import ConfigError
    from dvc.repo import Repo

    settings = TrackingSettings.resolve(root)
    lines = [
        f"MLflow tracking: {settings.display_uri}  [{settings.source}]",
        f"MLflow experiment: {settings.experiment_name}",
    ]
    if settings.is_remote:
        lines.append(f"local store (always written first, replayed by sync): {settings.local_uri}")
        creds = next((k for k in ("MLFLOW_TRACKING_PASSWORD", TOKEN_ENV) if os.environ.get(k)), "none set")
        lines.append(f"tracking credentials from: {creds}")
    try:
        dvc_repo = Repo(str(root))
    except ConfigError as exc:  # DVC's message names the key, not its value
        raise UserError(f".dvc/config or .dvc/config.local: {exc}; fix it with dvc remote modify") from None
    with dvc_repo:
        default = dvc_repo.config["core"].get("remote")
        for name, remote in dvc_repo.config["remote"].items():
            urls = [str(remote[key]) for key in ("url", "endpointurl") if remote.get(key)]
            if any(redact_uri(url) != url for url in urls):
                stored = "credentials in the URL, not shown"
            elif {"password", "secret_access_key"} & set(remote):
                stored = "credentials in config"
            else:
                stored = "no credentials"
            where = f" endpoint {redact_uri(remote['endpointurl'])}" if remote.get("endpointurl") else ""
            flag = " (default)" if name == default else ""
            lines.append(f"DVC remote {name}{flag}: {redact_uri(remote.get('url'))}{where} [{stored}]")
    project = project_config(root)
    if project.get("dagshub_owner"):
        repo_url = dagshub_url(project["dagshub_owner"], project.get("dagshub_repo", "?"), "")
        lines.append(f"DagsHub repo: {redact_uri(repo_url)}")
    return lines


def dagshub(root: Path, args: argparse.Namespace) -> None:
    """``make dagshub``: check the names (from the options, else from the environment), then configure."""
    typed = args.owner is not None or args.repo is not None  # the errors name what the user typed
    owner = args.owner if args.owner is not None else os.environ.get(OWNER_ENV, "")
    repo = args.repo if args.repo is not None else os.environ.get(REPO_ENV, "")
    if not owner or not repo:
        raise UserError(USAGE)
    check_name(owner, "--owner" if typed else "OWNER", "user or organisation")
    check_name(repo, "--repo" if typed else "REPO", "repository")
    set_project_dagshub(root, owner, repo)
    done = configure_dvc_remote(root, owner, repo, args.s3 or bool(os.environ.get(S3_ENV)), args.endpoint)
    shown = {k: redact_uri(v) if k in ("url", "endpointurl") else v for k, v in done.items()}
    print(f"DVC remote {REMOTE_NAME} (default): " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    print(f"MLflow tracking: {redact_uri(dagshub_url(owner, repo, '.mlflow'))} (pyproject.toml [tool.segmentation])")
    print("next: dvc push (or make push), then dvc repro; runs go to DagsHub, kept locally when it is away")


def deliver(root: Path, include_all: bool) -> None:
    """``make sync``: record the runs a failed stage kept on disk, then deliver the pending ones."""
    settings = TrackingSettings.resolve(root)
    kept = record_kept_runs(settings, root)
    if kept:
        print(f"recorded {kept} run(s) kept in {PENDING_DIR}/ in the local store ({redact_uri(settings.local_uri)})")
    if not settings.is_remote:
        print(f"nothing to deliver: tracking is local ({settings.display_uri})")
        return
    report = sync(settings, root, include_all=include_all)
    print(
        f"sync to {settings.display_uri}: {len(report.delivered)} run(s) delivered, "
        f"{report.considered - len(report.delivered)} not delivered"
    )
    if report.failed:
        reason = next(iter(report.failed.values()))
        raise UserError(f"MLflow tracking server {settings.display_uri}: {reason}; runs stay pending")


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dh = sub.add_parser("dagshub", help="configure the DVC remote and MLflow tracking for a DagsHub repo")
    dh.add_argument("--owner", help=f"DagsHub user or organisation (default: ${OWNER_ENV})")
    dh.add_argument("--repo", help=f"DagsHub repository (default: ${REPO_ENV})")
    dh.add_argument("--s3", action="store_true", help=f"DagsHub's S3-compatible endpoint, not HTTP (or ${S3_ENV}=1)")
    dh.add_argument("--endpoint", help="override the storage URL / S3 endpoint (another S3-compatible store)")
    sub.add_parser("show", help="print the effective configuration (no secrets)")
    sy = sub.add_parser("sync", help="deliver runs kept locally to the remote MLflow tracker")
    sy.add_argument("--all", action="store_true", help="also send local runs never meant for this remote")
    args = parser.parse_args(argv)
    if args.command == "dagshub":
        dagshub(project_root(), args)
    elif args.command == "show":
        print("\n".join(describe(project_root())))
    else:
        deliver(project_root(), args.all)


if __name__ == "__main__":
    sys.exit(main())
