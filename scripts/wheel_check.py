"""Build the wheel and use it as someone outside this repository would (CI runs this: make wheel-check).

    python scripts/wheel_check.py [--keep]

1. ``python -m build``: the sdist, then the wheel built from that sdist, into dist/; the wheel
   holds the package, LICENSE and the metadata, and nothing of tests/ or samples/;
2. a fresh virtualenv in a temporary directory, with the wheel (and its dependencies from the
   package index) installed into it;
3. in a scratch directory outside the repository, with the wheel's executable: the package
   imported is the installed one, ``target-everflow --about --format json`` shows every setting
   with its title, and the demo (the demo config and input copied from samples/) exits 0 and
   plans its postbacks.

Exits 0 when all of that works, else 1 with what failed. ``--keep`` keeps the temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "dist"
DEMO_ARGS = ["--config", "samples/demo_config.json", "--input", "samples/segment_events.singer"]
BUILD_TIMEOUT = 600  # seconds; the build and the install fetch packages from the index
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 300


class CheckFailed(Exception):
    pass


def run(
    args: list[str],
    *,
    cwd: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline; a non-zero exit is a failed check showing the output's end."""
    print("+", " ".join(str(a) for a in args), flush=True)
    try:
        proc = subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{args[0]} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise CheckFailed(f"{' '.join(map(str, args[:3]))} ... exited {proc.returncode}:\n{tail}")
    return proc


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment without anything pointing at the source tree or the dev virtualenv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    return env


def build(project: dict) -> Path:
    """sdist and wheel into dist/ (old ones of this project removed first); the wheel's path."""
    stem = project["name"].replace("-", "_")
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob(f"{stem}-*"):
        old.unlink()
    run(
        [sys.executable, "-m", "build", "--outdir", DIST, REPO],
        cwd=REPO,
        timeout=BUILD_TIMEOUT,
        env=clean_env(),
    )
    wheel = DIST / f"{stem}-{project['version']}-py3-none-any.whl"
    sdists = list(DIST.glob(f"{stem}-{project['version']}.tar.gz"))
    if not wheel.is_file() or not sdists:
        raise CheckFailed(f"python -m build left no {wheel.name} and sdist in {DIST}")
    return wheel


def inspect_wheel(wheel: Path, project: dict) -> None:
    stem = project["name"].replace("-", "_")
    info = f"{stem}-{project['version']}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"{info}/METADATA").decode()
    outside = sorted({n.split("/")[0] for n in names} - {"target_everflow", info})
    if outside:
        raise CheckFailed(f"the wheel holds more than the package: {outside}")
    if f"{info}/licenses/LICENSE" not in names:
        raise CheckFailed("the wheel has no LICENSE")
    headers = [line for line in metadata.split("\n\n", 1)[0].splitlines()]
    wanted = [
        f"License-Expression: {project['license']}",
        "License-File: LICENSE",
        f"Keywords: {','.join(project['keywords'])}",
    ]
    missing = [w for w in wanted if w not in headers]
    if missing:
        raise CheckFailed(f"the wheel's METADATA lacks {missing}")
    print(f"ok: {wheel.name}: the package, LICENSE and metadata ({len(names)} files)")


def install(wheel: Path, venv: Path) -> None:
    run([sys.executable, "-m", "venv", venv], cwd=venv.parent, timeout=RUN_TIMEOUT, env=clean_env())
    run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            wheel,
        ],
        cwd=venv.parent,
        timeout=INSTALL_TIMEOUT,
        env=clean_env(venv),
    )
    print(f"ok: installed into a fresh virtualenv ({venv})")


def use(venv: Path, work: Path, project: dict) -> None:
    env = clean_env(venv)
    exe = venv / "bin" / "target-everflow"
    where = run(
        [venv / "bin" / "python", "-c", "import target_everflow; print(target_everflow.__file__)"],
        cwd=work,
        timeout=RUN_TIMEOUT,
        env=env,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(venv.resolve()) or Path(
        where
    ).resolve().is_relative_to(REPO):
        raise CheckFailed(f"the installed target_everflow is {where}, not the wheel's")

    about = json.loads(
        run([exe, "--about", "--format", "json"], cwd=work, timeout=RUN_TIMEOUT, env=env).stdout
    )
    if about.get("name") != project["name"] or about.get("version") != project["version"]:
        raise CheckFailed(f"--about says {about.get('name')} {about.get('version')}")
    sys.path.insert(0, str(REPO))
    from target_everflow.adapter.target import plugin_settings_schema  # the source's view

    shown = {n: s.get("title") for n, s in about["settings"]["properties"].items()}
    expected = {n: s.get("title") for n, s in plugin_settings_schema()["properties"].items()}
    if shown != expected:
        raise CheckFailed(
            f"--about from the wheel differs from the source's settings: {shown} != {expected}"
        )
    print(
        f"ok: --about from the wheel: {project['name']} {project['version']}, {len(shown)} settings with titles"
    )

    shutil.copytree(REPO / "samples", work / "samples")
    config = json.loads((work / "samples" / "demo_config.json").read_text(encoding="utf-8"))
    run([exe, *DEMO_ARGS], cwd=work, timeout=RUN_TIMEOUT, env=env)
    summary = json.loads((work / config["summary_path"]).read_text(encoding="utf-8"))
    planned = (work / config["dry_run_output"]).read_text(encoding="utf-8").splitlines()
    if summary.get("delivered", 0) < 1 or len(planned) != summary["delivered"]:
        raise CheckFailed(
            f"the demo planned {len(planned)} postbacks, its summary says {summary.get('delivered')}"
        )
    print(
        f"ok: the demo from the wheel in {work}: {len(planned)} planned postbacks, "
        f"{sum(summary.get('dead_lettered', {}).values())} dead letters, exit 0"
    )


def main() -> int:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scratch = Path(tempfile.mkdtemp(prefix="target-everflow-wheel-"))
    try:
        wheel = build(project)
        inspect_wheel(wheel, project)
        venv, work = scratch / "venv", scratch / "work"
        work.mkdir()
        install(wheel, venv)
        use(venv, work, project)
    except CheckFailed as exc:
        print(f"wheel check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if "--keep" in sys.argv:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wheel check passed: {wheel.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
