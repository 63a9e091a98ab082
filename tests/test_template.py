"""The copier template: real `copier copy` / `copier update` of this repository, offline, in temporary folders.

Template repository only (copier.yml excludes this file from generated projects).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline_helpers import BIN, DAGSHUB_SINK, REPO, copy_project, paths, project_env, run, stage_names, stage_runs
from segmentation.config import load_section
from segmentation.tracking.remote import remote_key

pytestmark = pytest.mark.template

COPIER = [sys.executable, "-m", "copier"]
# A generated project's own tests, run with this venv; the slow end-to-end, server, UI and import tests are this repo's.
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
OWN_ANSWERS = {
    "project_name": "customer-segmentation",
    "author": "",
    "dagshub_owner": "",
    "dagshub_repo": "",
    "keep_example_data": "true",
    "dask_engine": "true",
    "remote_tracking": "true",
}
ANSWERS = {
    "project_name": "acme-segments",
    "author": "Ada O'Hara",
    "dagshub_owner": "ada-lab",
    "dagshub_repo": "acme-dh",
    "keep_example_data": "true",
}
# Files a template repository may hold that no generated project may get (committed here on purpose).
P = paths()  # every path as dvc.yaml declares it
DECOYS = [
    "mlflow.db",
    "mlruns/0/meta.yaml",
    "mlartifacts/x.txt",
    ".dvc/cache/files/md5/00/decoy",
    ".dvc/tmp/lock",
    ".dvcstore/files/md5/00/decoy",
    ".venv/pyvenv.cfg",
    ".uv/bin/uv",
    ".pytest_cache/README.md",
    ".ruff_cache/CACHEDIR.TAG",
    "src/segmentation/__pycache__/config.cpython-311.pyc",
    "data/raw/marketing_campaign.csv",
    P["features"],
    P["segments"],
    P["model"],
    P["elbow_plot"],
    "dvc_plots/index.html",
]
DAGSHUB_MLFLOW = f"{DAGSHUB_SINK}/ada-lab/acme-dh.mlflow"
# The template's committed results: a generated project makes its own with its first `dvc repro`.
RESULTS = re.compile(r"^(dvc\.lock|metrics/.*|reports/[^/]*\.(csv|html))$")
TEMPLATE_ONLY = {"copier.yml", ".copier/tasks.py", "tests/test_template.py", "docs/segments.png"}
TWINS = {
    "README.md.jinja",
    "pyproject.toml.jinja",
    "params.yaml.jinja",
    ".dvc/config.jinja",
    "{{_copier_conf.answers_file}}.jinja",
}


def git_files(root: Path, env) -> set[str]:
    return set(run(["git", "ls-files"], root, env).stdout.splitlines())


def project_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def copier_copy(template: Path, dest: Path, answers: dict[str, str], env) -> Path:
    cmd = [*COPIER, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD", "--quiet"]
    for key, value in answers.items():
        cmd += ["-d", f"{key}={value}"]
    run([*cmd, str(template), str(dest)], template.parent, env)
    return dest


def commit_all(root: Path, env, message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", message], root, env)


def assert_first_commit(gen: Path, env) -> None:
    """A generated project starts as one commit holding everything (so `dvc exp run` and `copier update` work)."""
    assert run(["git", "log", "--format=%s"], gen, env).stdout.splitlines() == [
        "Generated from the customer-segmentation template"
    ]
    assert run(["git", "status", "--porcelain"], gen, env).stdout == ""


def generated_env(root: Path) -> dict[str, str]:
    """This venv's python/dvc (no second set-up), but the generated project's own package first on the path."""
    return project_env(root.parent, PYTHONPATH=str(root / "src"))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A git copy of this repository (working tree included), plus committed decoys that must not be generated."""
    root = copy_project(tmp_path_factory.mktemp("template") / "template")
    env = project_env(root.parent)
    for rel in DECOYS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("decoy\n")
    run(["git", "add", "-f", *DECOYS], root, env)
    run(["git", "commit", "-q", "-m", "decoys"], root, env)
    return root, env


def test_template_rendered_with_its_own_answers_reproduces_itself(template, tmp_path):
    """No drift: with the template's own answers every generated file equals the template's (README aside)."""
    root, env = template
    gen = copier_copy(root, tmp_path / "customer-segmentation", OWN_ANSWERS, env)
    tracked = git_files(root, env)
    expected = {f for f in tracked if not RESULTS.match(f)} - set(DECOYS) - TEMPLATE_ONLY - TWINS
    assert project_files(gen) == expected | {".copier-answers.yml"}
    different = {f for f in expected if (gen / f).read_bytes() != (root / f).read_bytes()}
    assert different == {"README.md"}  # the generated README is the rendered twin, not the template's
    assert (gen / "README.md").read_text().startswith("# customer-segmentation\n")


def test_readme_twin_shares_sections_commands_and_targets():
    """README.md.jinja's headings, code blocks and make targets are the template README's (no drift)."""
    own = sections((REPO / "README.md").read_text())
    twin_text = re.sub(r"^\{%.*%\}\n", "", (REPO / "README.md.jinja").read_text(), flags=re.M)
    twin = sections(twin_text)
    assert set(twin) - {"(title)"} <= set(own), "a heading of README.md.jinja is missing from README.md"
    for heading, text in twin.items():
        if heading == "(title)":
            continue
        for block in code_blocks(text):
            assert block in code_blocks(own[heading]), f"README.md, section {heading!r} lacks:\n{block}"
    targets = set(re.findall(r"^([a-z][a-z-]*):.*## ", (REPO / "Makefile").read_text(), flags=re.M))
    for text in ("".join(own.values()), twin_text):
        used = set(re.findall(r"^make ([a-z-]+)", "\n".join(code_blocks(text)), flags=re.M))
        assert used and used <= targets, used - targets
    assert "make setup" in twin["Two commands"] and "make test" in twin["Two commands"]


def sections(markdown: str) -> dict[str, str]:
    """Heading text (any level) -> the text up to the next heading; code blocks are not scanned for headings."""
    out, heading, fenced = {"(title)": ""}, "(title)", False
    for line in markdown.splitlines(keepends=True):
        fenced ^= line.lstrip().startswith("```")
        match = None if fenced else re.match(r"^#{2,4} (.+)$", line)
        if match:
            heading = match.group(1).strip()
            out[heading] = ""
        else:
            out[heading] += line
    return out


def code_blocks(text: str) -> list[str]:
    """Fenced blocks, also those indented under a list item (their indentation removed)."""
    blocks = re.findall(r"^( *)```[a-z]*\n(.*?)^\1```$", text, flags=re.M | re.S)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]


@pytest.fixture(scope="module")
def generated(template, tmp_path_factory):
    root, env = template
    gen = copier_copy(root, tmp_path_factory.mktemp("generated") / "acme", ANSWERS, env)
    assert_first_commit(gen, env)
    return gen, generated_env(gen)


def test_answers_arrive_where_they_belong(generated, template):
    gen, _ = generated
    root, env = template
    for path in project_files(gen):
        if path.endswith(".html.j2"):  # the report's own Jinja templates (rendered by evaluate, not by copier)
            continue
        data = (gen / path).read_bytes()
        assert b"{{" not in data and b"{%" not in data, f"template marker left in {path}"
    readme = (gen / "README.md").read_text()
    assert readme.startswith("# acme-segments\n")
    assert "Author: Ada O'Hara." in readme
    assert "https://dagshub.com/ada-lab/acme-dh" in readme and "make dagshub OWNER=ada-lab REPO=acme-dh" in readme
    pyproject = tomllib.loads((gen / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "acme-segments"
    assert pyproject["project"]["authors"] == [{"name": "Ada O'Hara"}]
    assert pyproject["tool"]["segmentation"] == {
        "experiment_name": "acme-segments",
        "dagshub_owner": "ada-lab",
        "dagshub_repo": "acme-dh",
    }
    dvc_config = (gen / ".dvc" / "config").read_text()  # DagsHub storage is the default remote, no credentials
    assert "remote = origin" in dvc_config and "url = https://dagshub.com/ada-lab/acme-dh.dvc" in dvc_config
    assert "auth = basic" in dvc_config and "password" not in dvc_config
    lock = tomllib.loads((gen / "uv.lock").read_text())
    (own,) = [p for p in lock["package"] if p.get("source") == {"editable": "."}]
    assert own["name"] == "acme-segments"  # or `uv sync --frozen` (make setup) refuses the lock
    answers = yaml.safe_load((gen / ".copier-answers.yml").read_text())
    head = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert head.startswith(answers.pop("_commit")) and answers.pop("_src_path") == str(root)
    assert answers == {**ANSWERS, "keep_example_data": True, "dask_engine": False, "remote_tracking": True}
    # A DagsHub owner given: remote tracking is in by default (delivery, make sync, make dagshub, their tests).
    assert (gen / "src/segmentation/tracking/remote/__main__.py").is_file() and (gen / "tests/test_remote.py").is_file()
    assert ".copier-answers.yml" in git_files(gen, env)  # committed with the project
    for rel in [*DECOYS, *TEMPLATE_ONLY, *TWINS, "dvc.lock", P["train_metrics"], P["elbow_scores"]]:
        assert not (gen / rel).exists(), rel
    assert (gen / "data/example/marketing_campaign.csv").is_file() and (gen / "data/raw.dvc").is_file()


DASK_PACKAGES = {"dask", "distributed", "dask-ml"}


def uv() -> str:
    """The uv that `make setup` uses: on PATH, else the pinned copy in .uv/."""
    return shutil.which("uv") or str(REPO / ".uv" / "bin" / "uv")


def test_default_project_has_no_dask_engine(generated, template):
    """copier's default (dask_engine false): no engine code, tests or settings, no dask extra; its uv.lock is the
    one `uv lock` makes for its pyproject.toml (no extra, none of the 16 packages only Dask needs), and what `make
    setup` installs from it (`uv sync --frozen`, here its list by `uv export`) holds no Dask."""
    gen, env = generated
    root, _ = template
    env = {**env, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"}  # the lock as it is: no index, no download
    assert not (gen / "src/segmentation/engines/dask").exists() and (gen / "src/segmentation/engines/local").is_dir()
    assert not list((gen / "tests").glob("test_dask_*.py")) and (gen / "tests/test_engines.py").is_file()
    pyproject = tomllib.loads((gen / "pyproject.toml").read_text())
    assert "optional-dependencies" not in pyproject["project"]
    assert (
        pyproject["project"]["dependencies"]
        == tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    params = yaml.safe_load((gen / "params.yaml").read_text())["preprocess"]
    assert params["engine"] == "local" and "dask" not in params and "format" not in params["data"]
    assert load_section("preprocess", gen / "params.yaml").engine == "local"
    lock = tomllib.loads((gen / "uv.lock").read_text())
    names = {p["name"] for p in lock["package"]}
    assert not names & DASK_PACKAGES
    template_names = {p["name"] for p in tomllib.loads((root / "uv.lock").read_text())["package"]}
    template_names -= {"customer-segmentation"}
    assert len(template_names - names) == 16 and template_names >= names - {"acme-segments"}
    (own,) = [p for p in lock["package"] if p.get("source") == {"editable": "."}]
    assert "optional-dependencies" not in own and "provides-extras" not in own["metadata"]
    exported = run([uv(), "export", "--frozen", "--no-hashes", "--format", "requirements-txt"], gen, env).stdout
    installed = {re.split(r"[=\s\[;]", line, maxsplit=1)[0] for line in exported.splitlines() if line[:1].isalpha()}
    assert installed and "mlflow" in installed and not installed & DASK_PACKAGES
    extra = run([uv(), "export", "--frozen", "--extra", "dask"], gen, env, check=False)
    assert extra.returncode != 0


def test_generated_project_sets_up_reproduces_and_passes_its_tests(generated):
    gen, env = generated
    where = run([sys.executable, "-c", "import segmentation; print(segmentation.__file__)"], gen, env).stdout
    assert Path(where.strip()).is_relative_to(gen / "src")  # its own code runs, not the template's
    assert "restored from data/example/" in run([sys.executable, "scripts/bootstrap.py", "--skip-pth"], gen, env).stdout
    run(["dvc", "repro"], gen, env)
    assert json.loads(run(["dvc", "status", "--json"], gen, env).stdout) == {}
    for name in ("preprocess", "train", "evaluate"):  # same data and params as the template: same results
        assert json.loads((gen / f"metrics/{name}.json").read_text()) == json.loads(
            (REPO / f"metrics/{name}.json").read_text()
        )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{gen / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("acme-segments")
    runs = stage_runs(client, [experiment.experiment_id])
    assert len(runs) == 3
    # Its runs are meant for its DagsHub repo (here a closed loopback port stands in for dagshub.com: offline,
    # they stay in the local store, pending for `make sync`).
    assert all(r.data.tags.get(f"segmentation_pending_{remote_key(DAGSHUB_MLFLOW)}") for r in runs)
    tests = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not pipeline and not template and not remote and not ui",
            "--ignore=tests/test_imports.py",  # this very venv: this repo's run imports them
        ],
        gen,
        env,
        timeout=1500,  # one process, on busy cores
    )
    assert re.search(r"\d+ passed", tests.stdout) and "skipped" not in tests.stdout, tests.stdout
    run(["make", "lint", f"BIN={BIN}"], gen, env)  # its code is lint-clean, without the template's .copier/


def test_project_without_the_example_data_takes_your_data_and_its_make_test_passes(template, tmp_path):
    root, env = template
    gen = copier_copy(root, tmp_path / "bare-shop", {"keep_example_data": "false"}, env)
    assert_first_commit(gen, env)
    env = generated_env(gen)
    assert yaml.safe_load((gen / ".copier-answers.yml").read_text())["project_name"] == "bare-shop"
    assert not (gen / "data/example").exists() and not (gen / "data/raw.dvc").exists()
    for section in stage_names(gen):  # each stage's own section
        load_section(section, gen / "params.yaml")  # still valid params
    setup = run([sys.executable, "scripts/bootstrap.py", "--skip-pth"], gen, env)
    assert "no data/raw.dvc, no data to restore" in setup.stdout
    failed = run(["dvc", "repro"], gen, env, check=False)
    assert failed.returncode != 0 and "data/raw/customers.csv" in failed.stderr

    # The README's "Bring your own data", step by step, with a real table shipped by scikit-learn (wine).
    readme = (gen / "README.md").read_text()
    assert "make add-data FILE=data/raw/customers.csv" in readme
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame.drop(columns=["target"])
    wine.insert(0, "color", pd.cut(wine["hue"], [0, 0.8, 1.1, 9], labels=["dull", "mid", "vivid"]).astype(str))
    (gen / "data/raw").mkdir(parents=True, exist_ok=True)
    wine.to_csv(gen / "data/raw/customers.csv", sep=";", index=False)
    run(["make", "add-data", "FILE=data/raw/customers.csv", f"BIN={BIN}"], gen, env)
    staged = run(["git", "diff", "--cached", "--name-only"], gen, env).stdout.split()
    assert "data/raw/customers.csv.dvc" in staged and "data/raw/.gitignore" in staged
    params = yaml.safe_load((gen / "params.yaml").read_text())
    params["preprocess"].update(
        data={"path": "data/raw/customers.csv", "separator": ";", "encoding": "utf-8", "id_column": None},
        features=["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"],
        categorical={"columns": ["color"], "encoding": "onehot", "max_categories": 50},
    )
    (gen / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # The project's own `make test` (this venv: no second set-up) passes on the user's params and data.
    tests = run(["make", "test", f"BIN={BIN}"], gen, env, timeout=1500)
    summary = [line for line in tests.stdout.splitlines() if re.match(r"=+ .* in [\d.]+s", line)][-1]
    # All passed, none skipped: the smoke test ran the pipeline on the wine table.
    assert re.search(r"\d+ passed", summary) and not re.search(r"failed|error|skipped", summary), tests.stdout

    # No DagsHub owner: copier's default leaves remote tracking out. A tracker set anyway stops a stage before its
    # work with one line saying how to add the part; `make sync` (and dagshub, remote) too.
    assert not (gen / "src/segmentation/tracking/remote").exists()
    assert not (gen / "tests/test_remote.py").exists() and not (gen / "tests/test_hostile_names.py").exists()
    added = "`copier update --trust --defaults --data remote_tracking=true`"
    tracked = {**env, "MLFLOW_TRACKING_URI": DAGSHUB_SINK}
    stage = run(["dvc", "repro", "--force", "preprocess"], gen, tracked, check=False)
    errors = [line for line in stage.stderr.splitlines() if line.startswith("error:")]
    assert stage.returncode != 0 and "Traceback" not in stage.stderr, stage.stderr
    assert len(errors) == 1 and f"tracking_uri {DAGSHUB_SINK}: this project was generated without remote" in errors[0]
    assert added in errors[0] and "unset MLFLOW_TRACKING_URI" in errors[0]
    assert "preprocess: logged run" not in stage.stderr  # stopped before its work
    sync = run(["make", "sync", f"BIN={BIN}"], gen, env, check=False)
    assert sync.returncode != 0 and "generated without remote tracking" in sync.stderr and added in sync.stderr


def test_copy_from_a_used_clone_then_update(tmp_path):
    """The template clone has run its pipeline (`make repro`): still clean, so copier records a real commit."""
    env = project_env(tmp_path)
    root = copy_project(tmp_path / "template")
    run([sys.executable, "scripts/bootstrap.py", "--skip-pth"], root, env)
    run(["dvc", "repro"], root, env)
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""  # the commit reproduced itself
    gen = copier_copy(root, tmp_path / "used-shop", {"project_name": "used-shop"}, env)
    assert_first_commit(gen, env)
    edit(root / "src/segmentation/core/plotting.py", "\n\ndef ", '\n\nTEMPLATE_CHANGE = "v2"\n\n\ndef ')
    commit_all(root, env, "template v2")
    run([*COPIER, "update", "--trust", "--defaults", "--quiet"], gen, env)
    assert 'TEMPLATE_CHANGE = "v2"' in (gen / "src/segmentation/core/plotting.py").read_text()

    # A template with uncommitted changes: copier includes them through a draft commit of its own; the project
    # records the template's real commit instead (and says so), so that a later update works.
    edit(root / "src/segmentation/core/plotting.py", 'TEMPLATE_CHANGE = "v2"', 'TEMPLATE_CHANGE = "draft"')
    dest = tmp_path / "draft-shop"
    proc = run([*COPIER, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD", str(root), str(dest)], tmp_path, env)
    assert "note: the template had uncommitted changes" in proc.stderr
    recorded = yaml.safe_load((dest / ".copier-answers.yml").read_text())["_commit"]
    head = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert head.startswith(recorded)
    commit_all(root, env, "template v3")
    update = run([*COPIER, "update", "--trust", "--defaults"], dest, env, check=False)
    assert update.returncode == 0 and "Traceback" not in update.stderr, update.stderr
    assert 'TEMPLATE_CHANGE = "draft"' in (dest / "src/segmentation/core/plotting.py").read_text()


def test_update_brings_template_changes_and_keeps_user_edits(tmp_path):
    env = project_env(tmp_path)
    root = copy_project(tmp_path / "template")
    gen = copier_copy(root, tmp_path / "shop", {"project_name": "upd-shop"}, env)
    assert_first_commit(gen, env)
    first = yaml.safe_load((gen / ".copier-answers.yml").read_text())["_commit"]
    # The user tunes a param and edits the package.
    edit(gen / "params.yaml", "  k_max: 10\n", "  k_max: 12\n")
    edit(gen / "src/segmentation/core/report.py", 'CLUSTER_COLUMN = "cluster"\n', 'CLUSTER_COLUMN = "segment"\n')
    commit_all(gen, env, "my changes")
    # The template moves on: another param, a line of code, the project README.
    edit(root / "params.yaml", "  n_init: 10\n", "  n_init: 12\n")  # one file: params.yaml.jinja includes it
    edit(root / "src/segmentation/core/plotting.py", "\n\ndef ", '\n\nTEMPLATE_CHANGE = "v2"\n\n\ndef ')
    edit(root / "README.md.jinja", "## Use with DagsHub\n", "## Use with DagsHub\n\nNew in v2.\n")
    commit_all(root, env, "template v2")

    run([*COPIER, "update", "--trust", "--defaults", "--quiet"], gen, env)

    params = (gen / "params.yaml").read_text()
    assert "  k_max: 12\n" in params and "  n_init: 12\n" in params
    assert 'CLUSTER_COLUMN = "segment"\n' in (gen / "src/segmentation/core/report.py").read_text()
    assert 'TEMPLATE_CHANGE = "v2"' in (gen / "src/segmentation/core/plotting.py").read_text()
    assert "New in v2." in (gen / "README.md").read_text()
    answers = yaml.safe_load((gen / ".copier-answers.yml").read_text())
    assert answers["_commit"] != first and answers["project_name"] == "upd-shop"
    own = [p for p in tomllib.loads((gen / "uv.lock").read_text())["package"] if p.get("source") == {"editable": "."}]
    assert own[0]["name"] == "upd-shop"
    changed = run(["git", "status", "--porcelain"], gen, env).stdout
    assert not list(gen.rglob("*.rej")) and "<<<<<<<" not in params, changed
    assert set(changed.split()) >= {"M", "params.yaml", "src/segmentation/core/plotting.py", "README.md"}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.skipif(
    not os.environ.get("SEGMENTATION_TEST_SETUP"),
    reason="opt-in (SEGMENTATION_TEST_SETUP=1): `make setup` in a generated project installs a second venv (~1 min)",
)
def test_generated_project_make_setup_with_its_renamed_lock(template, tmp_path):
    root, env = template
    gen = copier_copy(root, tmp_path / "setup-shop", {"project_name": "setup-shop"}, env)
    # Its own venv from its uv.lock (`uv sync --frozen` refuses a lock naming another project); the user's uv cache.
    cache = os.environ.get("UV_CACHE_DIR") or str(Path.home() / ".cache" / "uv")
    env = {**env, "UV_CACHE_DIR": cache, "PATH": os.environ["PATH"]}
    run(["make", "setup"], gen, env)
    assert run([".venv/bin/python", "-c", "import dask"], gen, env, check=False).returncode != 0  # no Dask engine
    tests = run([".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not pipeline"], gen, env)
    assert re.search(r"\d+ passed", tests.stdout), tests.stdout
