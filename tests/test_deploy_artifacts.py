"""deploy/: the container, Compose, Kubernetes and systemd files, checked without a container
engine or a cluster: linted and schema-validated with the tools of the ``test`` extra (each
shown to reject a broken file first), and held to the operator guide (deploy/README.md) and
to the real command-line interfaces."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
README = (DEPLOY / "README.md").read_text()
sys.path.insert(0, str(DEPLOY))
import lock  # noqa: E402
import multihost  # noqa: E402


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")
    return str(path)


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120, **kw)


# ------------------------------------------------------------------ the real CLIs


def click_command(program: str, args: list[str]):
    """(click command, remaining args) for ``program args``, resolving sub-commands."""
    from spinemet.client.cli import app as client_app
    from spinemet.common.cli import app as spinemet_app
    from spinemet.server.cli import app as server_app

    apps = {"spinemet": spinemet_app, "flower-server": server_app,
            "spinemet-client": client_app}
    cmd = typer.main.get_command(apps[program])
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        cmd, args = cmd.commands[args[0]], args[1:]
    return cmd, args


def parse(argv: list[str]) -> dict:
    """Parse ``argv`` with the program's own parser (no code runs): its parameters."""
    cmd, args = click_command(Path(argv[0]).name, argv[1:])
    return cmd.make_context(Path(argv[0]).name, list(args)).params


def bash_commands(text: str) -> list[list[str]]:
    """The project commands (spinemet, flower-server, spinemet-client) in bash blocks."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("spinemet", "flower-server", "spinemet-client"):
                out.append(words)
    return out


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")]
    return rows


# ------------------------------------------------------------------ container files


def test_dockerfile_passes_hadolint_which_rejects_a_bad_one(tmp_path):
    hadolint = tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    rejected = run(hadolint, bad)
    assert rejected.returncode != 0 and "DL3007" in rejected.stdout   # the linter works
    done = run(hadolint, DEPLOY / "docker" / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def _stages() -> dict[str, list[str]]:
    stages, name = {}, None
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        m = re.match(r"FROM (\S+) AS (\S+)", line)
        if m:
            name = m.group(2)
            stages[name] = [f"BASE {m.group(1)}"]
        elif name and line.strip() and not line.startswith("#"):
            stages[name].append(line.strip())
    return stages


def test_images_are_cpu_torch_non_root_with_a_healthcheck_and_no_build_tools():
    st = _stages()
    assert set(st) == {"build", "runtime", "coordinator", "hospital"}
    build = " ".join(st["build"])
    assert "--index-url https://download.pytorch.org/whl/cpu" in build
    assert '"torch==2.13.0"' in build
    assert "-c requirements.lock" in build and "pip uninstall --yes pip" in build
    runtime = st["runtime"]
    assert "USER 10001:10001" in runtime
    assert not any(re.search(r"\b(pip|apt-get|gcc|make)\b", line) for line in runtime
                   if line.startswith("RUN")), runtime          # nothing installed at run time
    assert any(line.startswith("COPY --from=build /opt/spinemet/venv") for line in runtime)
    for target in ("coordinator", "hospital"):
        lines = st[target]
        assert lines[0] == "BASE runtime" and not any(x.startswith("USER") for x in lines)
        assert any(x.startswith("HEALTHCHECK") and f'"{target}"' in x for x in lines)
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", "\n".join(sum(st.values(), [])), re.M)
    for sources in copied:   # whatever the Dockerfile copies is let through .dockerignore
        for src in sources.split():
            assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, src


def test_the_pins_cover_the_run_time_tree_and_satisfy_its_requirements():
    """requirements.lock pins (==) every package of spinemet's run-time dependency tree and
    nothing else, at versions the project's own requirements accept (regenerate with
    deploy/lock.py). Versions are not compared with this environment: a fresh install
    picks up upstream releases the lock deliberately does not follow."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (DEPLOY / "docker" / "requirements.lock").read_text()
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert all(x.count("==") == 1 for x in lines), [x for x in lines if "==" not in x]
    pins = dict(line.split("==") for line in lines)
    assert set(pins) == set(lock.closure()), set(pins) ^ set(lock.closure())
    for req in map(Requirement, metadata.requires("spinemet")):
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["torch"] in ("2.13.0", "2.13.0+cpu") and pins["flwr"].startswith("1.42.")


def test_shell_scripts_pass_shellcheck_which_rejects_a_bad_one(tmp_path):
    shellcheck = tool("shellcheck")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    assert run(shellcheck, bad).returncode != 0
    scripts = [*sorted((DEPLOY / "bin").glob("*.sh")), DEPLOY / "multihost-test.sh"]
    done = run(shellcheck, *scripts)
    assert done.returncode == 0, done.stdout


def _fake(tmp_path: Path, program: str) -> dict:
    """A PATH where ``program`` prints its arguments as JSON instead of running."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / program).write_text(f"#!{sys.executable}\nimport json, sys\n"
                                "print(json.dumps(sys.argv))\n")
    (fake / program).chmod(0o755)
    return {"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"}


def test_the_coordinator_entry_point_builds_a_command_flower_server_accepts(tmp_path):
    env = {**_fake(tmp_path, "flower-server"), "SPINEMET_OUT": str(tmp_path / "run"),
           "SPINEMET_ROUNDS": "7", "SPINEMET_LOCAL_EPOCHS": "3", "SPINEMET_MIN_SITES": "4",
           "SPINEMET_BATCH_SIZE": "6",
           "SPINEMET_STRATEGY": "fedprox", "SPINEMET_THREADS": "2", "SPINEMET_CERTS": "/c"}
    done = run(DEPLOY / "bin" / "coordinator.sh", "--set", "proximal-mu=0.1", env=env)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)
    p = parse(["flower-server", *argv[1:]])
    assert (p["rounds"], p["local_epochs"], p["batch_size"], p["min_sites"], p["strategy"],
            p["threads"]) == (7, 3, 6, 4, "fedprox", 2)
    assert (str(p["out"]), str(p["certs"]), p["port"], p["insecure"], list(p["set_"])) == \
        (str(tmp_path / "run"), "/c", 9092, False, ["proximal-mu=0.1"])
    assert p["round_timeout"] == 1800 and p["wait_for_sites"] == 600 and p["resume"] is None
    # a run folder that holds a run: the restarted container resumes it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "deployment.json").write_text("{}")
    done = run(DEPLOY / "bin" / "coordinator.sh", env=env)
    assert json.loads(done.stdout.splitlines()[-1])[1:] == ["--resume", str(tmp_path / "run")]


def test_the_hospital_entry_point_builds_a_command_spinemet_client_accepts(tmp_path):
    env = _fake(tmp_path, "spinemet-client")
    missing = run(DEPLOY / "bin" / "hospital.sh", env=env)
    assert missing.returncode != 0 and "SPINEMET_SITE" in missing.stderr
    env.update(SPINEMET_SITE="hospital-b", SPINEMET_SERVER="fl.example.org:9092",
               SPINEMET_MAX_WAIT_TIME="60", SPINEMET_WORKERS="3")
    argv = json.loads(run(DEPLOY / "bin" / "hospital.sh", env=env).stdout)
    p = parse(["spinemet-client", *argv[1:]])
    assert (p["site"], p["server"], str(p["data"]), str(p["cache"]), str(p["certs"])) == \
        ("hospital-b", "fl.example.org:9092", "/data", "/var/cache/spinemet", "/certs")
    assert (p["max_wait_time"], p["workers"], p["runtime_port"], p["insecure"]) == \
        (60.0, 3, 9094, False)


def test_the_hospital_healthcheck_follows_the_supernode_port():
    import socket

    health = DEPLOY / "docker" / "healthcheck.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        up = run(sys.executable, health, "hospital",
                 env={**os.environ, "SPINEMET_RUNTIME_PORT": str(port)})
    down = run(sys.executable, health, "hospital",
               env={**os.environ, "SPINEMET_RUNTIME_PORT": str(port)})
    assert up.returncode == 0 and down.returncode == 1 and "unhealthy" in down.stderr
    nothing = run(sys.executable, health, "coordinator",
                  env={**os.environ, "SPINEMET_PORT": str(port), "SPINEMET_CERTS": "/none"})
    assert nothing.returncode == 1


# ------------------------------------------------------------------ compose


def test_compose_file_is_valid_against_the_compose_spec(tmp_path):
    check = tool("check-jsonschema")
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a\n    volumez: []\n")
    assert run(check, "--builtin-schema", "vendor.compose-spec", bad).returncode != 0
    done = run(check, "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_and_volumes_are_the_ones_the_guide_lists():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    guide = section("Compose")
    listed = {row[0].strip("`"): row for row in table(guide) if len(row) == 3}
    assert set(listed) == set(services)
    assert {row[0].strip("`") for row in table(guide) if len(row) == 2} == set(volumes)
    for name, svc in services.items():
        assert svc["build"]["target"] == listed[name][1].strip("`")
        mounts = {}
        for spec in svc["volumes"]:
            read_only = spec.endswith(":ro")
            source, target = spec.removesuffix(":ro").rsplit(":", 1)
            mounts[target] = (source, read_only)
        doc = dict(re.findall(r"`(/[\w/]+)` \(([^)]*)\)", listed[name][2]))
        assert set(doc) == set(mounts), name
        for target, (source, read_only) in mounts.items():
            assert doc[target].startswith("read-only") == read_only, (name, target)
            if source in volumes:
                assert f"volume `{source}`" in doc[target], (name, target)
        assert ("ports" in svc) == (name == "coordinator")       # hospitals: outbound only
        if name != "coordinator":
            assert mounts["/data"][1] and mounts["/certs"][1]   # data and keys read-only
            assert svc["environment"]["SPINEMET_SITE"] == name
            assert svc["environment"]["SPINEMET_SERVER"] == "coordinator:9092"


# ------------------------------------------------------------------ Kubernetes


def test_kubernetes_manifests_validate_and_a_broken_one_does_not(tmp_path):
    validate = tool("kubernetes-validate")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
                   "spec: {ports: [{port: fleet}], typo: 1}\n")
    assert run(validate, "--strict", bad).returncode != 0
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    done = run(validate, "--strict", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == sum(
        len([d for d in yaml.safe_load_all(f.read_text()) if d]) for f in files)


def test_the_coordinator_manifest_wires_service_secrets_and_run_volume():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "coordinator.yaml")
                                                     .read_text())}
    assert set(docs) == {"ConfigMap", "PersistentVolumeClaim", "Job", "Service", "NetworkPolicy"}
    pod = docs["Job"]["spec"]["template"]["spec"]
    main = pod["containers"][0]
    env = {e["name"]: e["value"] for e in main["env"]}
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["run"]["persistentVolumeClaim"]["claimName"] == \
        docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts["run"] == env["SPINEMET_OUT"] and mounts["certs"] == env["SPINEMET_CERTS"]
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    examples = {d["metadata"]["name"]: d for d in
                yaml.safe_load_all((DEPLOY / "k8s" / "secrets.example.yaml").read_text())}
    assert secrets == set(examples)
    assert set(examples["spinemet-coordinator-tls"]["stringData"]) == \
        {"server.crt", "server.key", "ca.crt", "enrolled.json"}
    assert pod["securityContext"]["runAsNonRoot"] and pod["restartPolicy"] == "OnFailure"
    port = main["ports"][0]
    assert (port["containerPort"], env["SPINEMET_PORT"]) == (9092, "9092")
    svc = docs["Service"]["spec"]
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(9092, port["name"])]
    assert svc["selector"] == docs["Job"]["spec"]["template"]["metadata"]["labels"]
    ingress = docs["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == [9092]
    assert set(docs["ConfigMap"]["data"]) <= documented_variables()


# ------------------------------------------------------------------ systemd

# systemdlint's security rules that are wrong for this unit: Delegate= is for services that
# manage cgroups themselves, and its UMask rule reads the bits inverted (UMask=0077 removes
# every group and other permission).
SYSTEMDLINT_WRONG = {"Security.Delegate", "Security.UMaskOW"}


def test_systemd_unit_lints_clean_and_a_broken_one_does_not(tmp_path):
    lint = tool("systemdlint")
    fmt = "{path}:{line}:{severity} [{id}] - {msg}"
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStartt=/bin/true\nRestart=sometimes\n")
    found = run(lint, "--norootfs", "--messageformat", fmt, bad)
    found = found.stdout + found.stderr
    assert "[InvalidSetting]" in found and "[InvalidValue]" in found
    done = run(lint, "--norootfs", "--messageformat", fmt,
               DEPLOY / "systemd" / "spinemet-hospital.service")
    found = done.stdout + done.stderr
    assert done.returncode in (0, 1) and "unknown key" not in found
    ids = set(re.findall(r"\[([\w.]+)\]", found))
    assert ids <= SYSTEMDLINT_WRONG, found


def test_systemd_unit_runs_a_command_spinemet_client_accepts():
    unit = (DEPLOY / "systemd" / "spinemet-hospital.service").read_text()
    example = dict(line.split("=", 1) for line in
                   (DEPLOY / "systemd" / "hospital.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: example[m.group(1)], exec_start))
    p = parse(argv)
    assert (p["site"], str(p["cache"])) == (example["SPINEMET_SITE"], example["SPINEMET_CACHE"])
    assert re.search(r"^ReadWritePaths=(.+)$", unit, re.M).group(1) == example["SPINEMET_CACHE"]
    assert example["SPINEMET_DATA"] in re.search(r"^ReadOnlyPaths=(.+)$", unit, re.M).group(1)
    assert re.search(r"^RestartPreventExitStatus=2 3$", unit, re.M)
    assert re.search(r"^User=spinemet$", unit, re.M)


# ------------------------------------------------------------------ the guide


def documented_variables() -> set[str]:
    return {row[0].strip("`") for row in table(section("Configuration"))}


def test_every_configuration_variable_is_documented_and_every_documented_one_used():
    used = set()
    for path in [*(DEPLOY / "bin").glob("*.sh"), DEPLOY / "docker" / "healthcheck.py"]:
        used |= set(re.findall(r"SPINEMET_[A-Z_]+", path.read_text()))
    assert used == documented_variables()
    for path in (DEPLOY / "coordinator.env", DEPLOY / "systemd" / "hospital.env.example",
                 DEPLOY / "systemd" / "spinemet-hospital.service"):
        assert set(re.findall(r"SPINEMET_[A-Z_]+", path.read_text())) <= used, path


def test_the_guide_shows_the_commands_the_multihost_test_runs(tmp_path):
    shown = bash_commands(section("The multi-host test"))
    work = tmp_path / "w"
    cmds = multihost.commands(work, BIN, "10.99.0.1", work / "cohort")
    expected = [[Path(argv[0]).name, *argv[1:]] for argv in cmds.values()]
    rendered = []
    for words in shown:
        for site in (multihost.SITES if any("$SITE" in w for w in words) else [None]):
            rendered.append([w.replace("$W", str(work)).replace("$SITE", site or "")
                             for w in words])
    assert sorted(map(tuple, rendered)) == sorted(map(tuple, expected))


def test_every_command_in_the_guide_parses_with_the_real_cli():
    commands = bash_commands(README)
    programs = {c[0] for c in commands}
    assert programs == {"spinemet", "flower-server", "spinemet-client"}
    assert len(commands) >= 8
    for argv in commands:
        parse([w.replace("$W", "/w").replace("$SITE", "hospital-a") for w in argv])


def test_the_guides_revoke_and_re_add_procedure_gives_a_site_a_new_enrolled_key(tmp_path):
    """Enrolling, revoking and rotating a site key as deploy/README.md says."""
    from spinemet.common.certs import add_site, init_pki, load_enrolled_keys

    pki = tmp_path / "pki"
    init_pki(pki, "fl.example.org", ["hospital-a", "hospital-b"])
    add_site(pki, "hospital-c")                                   # enrolling
    before = load_enrolled_keys(pki / "coordinator")
    assert set(before) == {"hospital-a", "hospital-b", "hospital-c"}
    enrolled = pki / "coordinator" / "enrolled.json"              # revoking hospital-b
    record = json.loads(enrolled.read_text())
    del record["hospital-b"]
    enrolled.write_text(json.dumps(record, indent=1))
    (pki / "coordinator" / "sites" / "hospital-b.pub").unlink()
    assert set(load_enrolled_keys(pki / "coordinator")) == {"hospital-a", "hospital-c"}
    shutil.rmtree(pki / "sites" / "hospital-b")                    # rotating: same name
    add_site(pki, "hospital-b")
    after = load_enrolled_keys(pki / "coordinator")
    assert after["hospital-b"].fingerprint != before["hospital-b"].fingerprint
    assert after["hospital-a"].fingerprint == before["hospital-a"].fingerprint
