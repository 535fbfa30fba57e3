"""infra/: the manifests parse, run real `segpipe` subcommands and shipped job specs, agree on
GPUs, versions and image, hold no credentials, and the Dockerfile pins what it installs."""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from segpipe.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "Dockerfile"
IMAGE_HOME = "/opt/segpipe/"  # WORKDIR of the image, where the Dockerfile copies jobs/

MANIFESTS = sorted(INFRA.rglob("*.yaml"))
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
SECRET_KEY_NAME = re.compile(r"password|passwd|token|secret_?access|access_?key|api_?key|^secret$",
                             re.IGNORECASE)
SEGPIPE_COMMAND = re.compile(r"(?<![\w./-])segpipe\s+([a-z][\w-]*)(?:\s+([^\s\"']+))?")


def pyproject() -> dict[str, Any]:
    import tomllib  # Python 3.11+, as CI and the image run

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def docs_of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every Ray cluster spec: RayClusters and the clusters RayJobs create."""
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in docs_of_kind("RayCluster")]
    specs += [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"])
              for d in docs_of_kind("RayJob")]
    return specs


def groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def pod_specs(node: Any) -> Iterator[dict[str, Any]]:
    """Every pod spec (a mapping with `containers`) anywhere inside a manifest."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from pod_specs(value)


def commands() -> list[tuple[str, str]]:
    """(where, shell text) for every command a manifest or the Dockerfile runs."""
    found = [(f"{path.name} RayJob entrypoint", doc["spec"]["entrypoint"])
             for path, doc in documents() if doc["kind"] == "RayJob"]
    for path, doc in documents():
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                text = " ".join(container.get("command", []) + container.get("args", []))
                if text:
                    found.append((f"{path.name} container {container['name']}", text))
    found.append(("Dockerfile ENTRYPOINT", " ".join(dockerfile_json("ENTRYPOINT"))))
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [tuple(ln.split(None, 1)) for ln in lines if ln and not ln.startswith("#")]


def dockerfile_json(instruction: str) -> list[str]:
    (value,) = [v for i, v in dockerfile_instructions() if i.upper() == instruction]
    return json.loads(value)


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def literal_secrets(node: Any, where: str = "") -> list[str]:
    """Places in parsed YAML where a credential is written as a literal value."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and SECRET_KEY_NAME.search(node["name"]):
            found.append(f"{where}: env {node['name']} has a literal value")
        for key, value in node.items():
            if isinstance(value, str) and SECRET_KEY_NAME.search(str(key)) and value:
                found.append(f"{where}.{key}")
            if isinstance(value, str) and "\n" in value:  # embedded YAML: runtime envs, configs
                try:
                    found += literal_secrets(yaml.safe_load(value), f"{where}.{key}")
                except yaml.YAMLError:
                    pass
            found += literal_secrets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += literal_secrets(value, f"{where}[{i}]")
    return found


def test_every_manifest_parses():
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-annotate.yaml",
                                          "cronjob-enrich.yaml"}
    kinds = set()
    for path, doc in documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
        kinds.add(doc["kind"])
    assert kinds >= {"RayCluster", "RayJob", "CronJob"}


def test_commands_are_real_subcommands_and_specs_are_shipped():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    used = {}
    for where, text in commands():
        for subcommand, arg in SEGPIPE_COMMAND.findall(text):
            assert subcommand in sub.choices, f"{where}: `segpipe {subcommand}` is no subcommand"
            used[where] = subcommand
            if subcommand == "run":
                assert arg.startswith(IMAGE_HOME), f"{where}: {arg} is not in the image"
                assert (ROOT / arg[len(IMAGE_HOME):]).is_file(), f"{where}: no such spec {arg}"
    assert dockerfile_json("ENTRYPOINT") == ["segpipe"]
    assert set(used.values()) == {"run"}, used
    assert any("RayJob" in w for w in used) and any("submit" in w for w in used)


def test_gpu_limits_equal_ray_num_gpus():
    checked = 0
    for name, spec in cluster_specs():
        gpu_groups = 0
        for group_name, group in groups(spec):
            (container,) = group["template"]["spec"]["containers"][:1]
            resources = container["resources"]
            limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
            request = resources.get("requests", {}).get("nvidia.com/gpu")
            num_gpus = group.get("rayStartParams", {}).get("num-gpus")
            where = f"{name} group {group_name}"
            if limit:
                gpu_groups += 1
                assert num_gpus == str(limit), f"{where}: num-gpus {num_gpus!r} != limit {limit}"
            else:
                assert num_gpus in (None, "0"), f"{where}: num-gpus {num_gpus!r} without a GPU"
            assert request is None or int(request) == limit, where
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), where
        assert gpu_groups >= 1, f"{name} has no GPU worker group"
        checked += 1
    assert checked >= 2


def test_one_image_and_one_ray_version_everywhere():
    (base,) = [v for i, v in dockerfile_instructions() if i.upper() == "FROM"]
    ray_version = pins(INFRA / "constraints.txt")["ray"]
    assert base.startswith(f"rayproject/ray:{ray_version}-py311-"), base
    assert {spec["rayVersion"] for _, spec in cluster_specs()} == {ray_version}
    images = {c["image"] for _, doc in documents() for pod in pod_specs(doc)
              for c in pod["containers"]}
    assert len(images) == 1, images


def test_pods_run_as_non_root_without_privilege_escalation():
    for path, doc in documents():
        for pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, path.name
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, path.name


def test_no_credentials_in_manifests_specs_or_docs():
    files = MANIFESTS + sorted((ROOT / "jobs").glob("*.yaml")) + [DOCKERFILE]
    files += [p for p in [ROOT / "docs" / "deploy.md"] if p.exists()]
    for path in files:
        assert not AWS_KEY_ID.search(path.read_text()), path
    for path, doc in documents():
        assert literal_secrets(doc, path.name) == []
    # S3 credentials reach the pods only by reference, from the Secret segpipe-s3.
    refs = [c["envFrom"] for _, doc in documents() for pod in pod_specs(doc)
            for c in pod["containers"] if "envFrom" in c]
    assert refs and all(r == [{"secretRef": {"name": "segpipe-s3", "optional": True}}]
                        for r in refs)


def test_credential_check_catches_literals():
    manifest = yaml.safe_load("""
env:
  - {name: AWS_SECRET_ACCESS_KEY, value: abc}
  - {name: AWS_REGION, value: us-east-1}
runtimeEnvYAML: |
  env_vars:
    AWS_ACCESS_KEY_ID: abc
""")
    assert literal_secrets(manifest) == [".env[0]: env AWS_SECRET_ACCESS_KEY has a literal value",
                                         ".runtimeEnvYAML.env_vars.AWS_ACCESS_KEY_ID"]
    assert AWS_KEY_ID.search("key AKIAABCDEFGHIJKLMNOP here")


def test_dockerfile_pins_its_base_and_installs_with_constraints():
    instructions = dockerfile_instructions()
    for instruction, value in instructions:
        if instruction.upper() == "FROM":
            image = value.split()[0]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, image
            assert not image.endswith(":latest"), image
        if instruction.upper() in ("ENV", "ARG"):
            assert not SECRET_KEY_NAME.search(value), value
    installs = [v for i, v in instructions if i.upper() == "RUN" and "pip install" in v]
    assert installs and all("-c infra/constraints.txt" in v for v in installs), installs
    users = [v for i, v in instructions if i.upper() == "USER"]
    assert users[-1].split(":")[0] not in ("root", "0")
    scripts = pyproject()["project"]["scripts"]
    assert dockerfile_json("ENTRYPOINT")[0] in scripts


def test_build_context_holds_what_the_dockerfile_copies():
    keep = [ln[1:] for ln in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
            if ln.startswith("!")]
    for instruction, value in dockerfile_instructions():
        if instruction.upper() == "COPY":
            for source in [w for w in value.split() if not w.startswith("--")][:-1]:
                assert any(fnmatch.fnmatch(source, k) or source.rstrip("/") == k.rstrip("/")
                           for k in keep), source


def test_image_constraints_pin_every_dependency():
    image = pins(INFRA / "constraints.txt")
    project = pyproject()["project"]["dependencies"]
    for requirement in project:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in image, name
    development = pins(ROOT / "constraints.txt")
    for name in ("torch", "torchvision"):
        assert image[name] == development[name], name


def test_cronjob_scripts_compile():
    (cronjob,) = docs_of_kind("CronJob")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    programs = re.findall(r"<<'PY'\n(.*?)\nPY\n", script, re.DOTALL)
    assert len(programs) == 2
    for program in programs:
        compile(program, "cronjob-enrich.yaml", "exec")


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-annotate.yaml"])
def test_clusters_use_the_service_account_for_storage_access(name):
    (doc,) = yaml.safe_load_all((INFRA / "kuberay" / name).read_text())
    pods = list(pod_specs(doc))
    ray_pods = [p for p in pods if p["containers"][0]["name"].startswith("ray-")]
    assert ray_pods and all(p["serviceAccountName"] == "segpipe" for p in ray_pods)


def test_clusters_require_the_ray_token_and_submitters_carry_it():
    for name, spec in cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": "segpipe-ray-token"}, name
    (cronjob,) = docs_of_kind("CronJob")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "segpipe-ray-token", "key": "auth_token"}}
