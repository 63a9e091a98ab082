"""DagsHub set-up, configuration report and tracking sync: ``python -m segmentation.tracking.remote
{dagshub,show,sync}``.

``dagshub --owner O --repo R`` (``make dagshub OWNER=O REPO=R [S3=1]``, values passed in the environment) makes DVC
remote ``origin`` DagsHub's storage (``https://dagshub.com/O/R.dvc``, or with ``--s3`` its S3 endpoint), credentials
from ``DAGSHUB_USER_TOKEN`` in ``.dvc/config.local`` only, and sets ``dagshub_owner``/``dagshub_repo`` in
pyproject.toml so that MLflow tracks to ``https://dagshub.com/O/R.mlflow``. Nothing here talks to DagsHub;
``DAGSHUB_CLIENT_HOST`` points every URL at another host. Every URL printed is redacted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from segmentation.errors import UserError, stage_entrypoint
from segmentation.tracking.delivery import sync
from segmentation.tracking.settings import (
    TrackingSettings,
    dagshub_host,
    dagshub_url,
    project_config,
    project_root,
    redact_uri,
)
from segmentation.tracking.store import PENDING_DIR, record_kept_runs

REMOTE_NAME = "origin"
TOKEN_ENV = "DAGSHUB_USER_TOKEN"
USER_ENV = "DAGSHUB_USERNAME"
# How `make dagshub` hands over OWNER, REPO and S3: through the environment, never through a command line.
OWNER_ENV = "SEGMENTATION_DAGSHUB_OWNER"
REPO_ENV = "SEGMENTATION_DAGSHUB_REPO"
S3_ENV = "SEGMENTATION_DAGSHUB_S3"
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


safe_url = redact_uri  # a URL fit to print


def s3_endpoint(owner: str, environ=None) -> str:
    """DagsHub's S3-compatible endpoint for ``owner``'s repositories (the bucket is the repo name)."""
    return f"{dagshub_host(environ)}/api/v1/repo-buckets/s3/{owner}"


def set_project_dagshub(root: Path, owner: str, repo: str) -> None:
    """Write ``dagshub_owner``/``dagshub_repo`` into ``[tool.segmentation]``, keeping the file's formatting."""
    import tomlkit

    path = root / "pyproject.toml"
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    tool = doc.setdefault("tool", tomlkit.table())
    table = tool.setdefault("segmentation", tomlkit.table())
    table["dagshub_owner"] = owner
    table["dagshub_repo"] = repo
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def configure_dvc_remote(
    root: Path,
    owner: str,
    repo: str,
    use_s3: bool = False,
    endpoint: str | None = None,
    environ=None,
) -> dict[str, str]:
    """Make ``origin`` the default DVC remote on DagsHub, credentials only in ``.dvc/config.local``; returns what
    was configured (no secrets)."""
    from dvc.repo import Repo

    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV)
    user = env.get(USER_ENV) or owner
    if use_s3:
        remote = {"url": f"s3://{repo}", "endpointurl": endpoint or s3_endpoint(owner, env)}
        secrets = {"access_key_id": token, "secret_access_key": token} if token else {}
    else:
        remote = {"url": endpoint or dagshub_url(owner, repo, ".dvc", env), "auth": "basic"}
        secrets = {"user": user, "password": token} if token else {}
    dvc_repo = Repo(str(root))
    try:
        with dvc_repo.config.edit("repo") as conf:
            conf["remote"][REMOTE_NAME] = remote
            conf["core"]["remote"] = REMOTE_NAME
        with dvc_repo.config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = secrets
    finally:
        dvc_repo.close()
    return {**remote, "credentials": ".dvc/config.local" if token else f"none (set {TOKEN_ENV} and re-run)"}


def describe(root: Path) -> list[str]:
    """Lines describing the effective remote and tracking configuration (never a secret)."""
    from dvc.config import ConfigError
    from dvc.repo import Repo

    settings = TrackingSettings.resolve(root)
    project = project_config(root)
    lines = [
        f"MLflow tracking: {safe_url(settings.tracking_uri)}  [{settings.source}]",
        f"MLflow experiment: {settings.experiment_name}",
    ]
    if settings.is_remote:
        lines.append(f"local store (always written first, replayed by sync): {settings.local_uri}")
        creds = "MLFLOW_TRACKING_PASSWORD" if os.environ.get("MLFLOW_TRACKING_PASSWORD") else None
        creds = creds or (TOKEN_ENV if os.environ.get(TOKEN_ENV) else "none set")
        lines.append(f"tracking credentials from: {creds}")
    try:
        dvc_repo = Repo(str(root))
    except ConfigError as exc:  # DVC's message names the key, not its value
        raise UserError(f".dvc/config or .dvc/config.local: {exc}; fix it with dvc remote modify") from None
    try:
        conf = dvc_repo.config
        default = conf["core"].get("remote")
        for name, remote in conf["remote"].items():
            flag = " (default)" if name == default else ""
            urls = [str(remote[key]) for key in ("url", "endpointurl") if remote.get(key)]
            if any(safe_url(url) != url for url in urls):
                stored = "credentials in the URL, not shown"
            elif {"password", "secret_access_key"} & set(remote):
                stored = "credentials in config"
            else:
                stored = "no credentials"
            where = f" endpoint {safe_url(remote['endpointurl'])}" if remote.get("endpointurl") else ""
            lines.append(f"DVC remote {name}{flag}: {safe_url(remote.get('url'))}{where} [{stored}]")
    finally:
        dvc_repo.close()
    if project.get("dagshub_owner"):
        repo_url = dagshub_url(project["dagshub_owner"], project.get("dagshub_repo", "?"), "")
        lines.append(f"DagsHub repo: {safe_url(repo_url)}")
    return lines


@stage_entrypoint
def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dh = sub.add_parser("dagshub", help="configure the DVC remote and MLflow tracking for a DagsHub repo")
    dh.add_argument("--owner", help=f"DagsHub user or organisation (default: ${OWNER_ENV})")
    dh.add_argument("--repo", help=f"DagsHub repository (default: ${REPO_ENV})")
    dh.add_argument(
        "--s3", action="store_true", help=f"use DagsHub's S3-compatible endpoint instead of HTTP (or ${S3_ENV}=1)"
    )
    dh.add_argument("--endpoint", help="override the storage URL / S3 endpoint (another S3-compatible store)")
    sub.add_parser("show", help="print the effective configuration (no secrets)")
    sy = sub.add_parser("sync", help="deliver runs kept locally to the remote MLflow tracker")
    sy.add_argument("--all", action="store_true", help="also send local runs never meant for this remote")
    args = parser.parse_args(argv)
    root = project_root()

    if args.command == "dagshub":
        owner, repo = args.owner, args.repo
        owner_name, repo_name = ("--owner", "--repo") if owner is not None or repo is not None else ("OWNER", "REPO")
        owner = os.environ.get(OWNER_ENV, "") if owner is None else owner
        repo = os.environ.get(REPO_ENV, "") if repo is None else repo
        if not owner or not repo:
            raise UserError(USAGE)
        check_name(owner, owner_name, "user or organisation")
        check_name(repo, repo_name, "repository")
        use_s3 = args.s3 or bool(os.environ.get(S3_ENV))
        set_project_dagshub(root, owner, repo)
        done = configure_dvc_remote(root, owner, repo, use_s3=use_s3, endpoint=args.endpoint)
        shown = {k: safe_url(v) if k in ("url", "endpointurl") else v for k, v in done.items()}
        print(f"DVC remote {REMOTE_NAME} (default): " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        print(f"MLflow tracking: {safe_url(dagshub_url(owner, repo, '.mlflow'))} (pyproject.toml [tool.segmentation])")
        print("next: dvc push (or make push), then dvc repro; runs go to DagsHub, kept locally when it is away")
    elif args.command == "show":
        print("\n".join(describe(root)))
    else:
        settings = TrackingSettings.resolve(root)
        kept = record_kept_runs(settings, root)
        if kept:
            print(f"recorded {kept} run(s) kept in {PENDING_DIR}/ in the local store ({safe_url(settings.local_uri)})")
        if not settings.is_remote:
            print(f"nothing to deliver: tracking is local ({safe_url(settings.tracking_uri)})")
            return
        report = sync(settings, root, include_all=args.all)
        print(
            f"sync to {safe_url(settings.tracking_uri)}: {len(report.delivered)} run(s) delivered, "
            f"{report.considered - len(report.delivered)} not delivered"
        )
        if report.failed:
            reason = next(iter(report.failed.values()))
            raise UserError(f"MLflow tracking server {safe_url(settings.tracking_uri)}: {reason}; runs stay pending")


if __name__ == "__main__":
    sys.exit(main())
