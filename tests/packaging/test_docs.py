"""docs/: the containerd (TOML) and iSulad (JSON) snippets and the Kubernetes manifests parse, and
their handler names and socket paths agree with each other and with what the units start."""
from __future__ import annotations

import json
import re
import shlex
import sys

import yaml

from rpmroot import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DOCS = REPO / "docs"
TYPES = ("runc", "wasm", "quark", "vmm")


def fenced(path, lang: str) -> list:
    return re.findall(r"```%s\n(.*?)```" % lang, path.read_text(), re.S)


def unit_socket(sandbox_type: str) -> str:
    text = (REPO / "rpm" / "sysconfig" / ("kuasar-" + sandbox_type)).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("OPTIONS="))
    argv = shlex.split(shlex.split(line.split("=", 1)[1])[0])
    return argv[argv.index("--listen") + 1]


def containerd_config() -> dict:
    (block,) = fenced(DOCS / "containerd.md", "toml")
    return tomllib.loads(block)


def test_containerd_snippet() -> None:
    config = containerd_config()
    assert config["version"] == 3
    runtimes = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert sorted(runtimes) == sorted("kuasar-" + t for t in TYPES)
    for t in TYPES:
        runtime = runtimes["kuasar-" + t]
        assert runtime["runtime_type"] == "io.containerd.kuasar-%s.v1" % t
        assert runtime["io_type"] in ("fifo", "streaming")
        plugin = config["proxy_plugins"][runtime["sandboxer"]]
        assert plugin["type"] == "sandbox"
        assert plugin["address"] == unit_socket(t)


def test_isulad_snippet() -> None:
    (block,) = fenced(DOCS / "isulad.md", "json")
    config = json.loads(block)
    sandboxers = config["cri-sandboxers"]
    assert sorted(sandboxers) == sorted(config["cri-runtimes"]) == sorted("kuasar-" + t for t in TYPES)
    assert config["default-sandboxer"] in sandboxers
    for t in TYPES:
        assert sandboxers["kuasar-" + t] == {"name": t, "address": unit_socket(t)}
        assert config["cri-runtimes"]["kuasar-" + t] == "io.containerd.kuasar-%s.v1" % t


def test_runtime_classes_match_containerd_handlers() -> None:
    classes = [d for d in yaml.safe_load_all((DOCS / "k8s" / "runtimeclasses.yaml").read_text()) if d]
    runtimes = containerd_config()["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert all(c["apiVersion"] == "node.k8s.io/v1" and c["kind"] == "RuntimeClass" for c in classes)
    assert sorted(c["handler"] for c in classes) == sorted(runtimes)
    by_name = {c["metadata"]["name"]: c for c in classes}
    overhead = by_name["kuasar-vmm"]["overhead"]["podFixed"]
    assert overhead["memory"].endswith("Mi") and int(overhead["memory"][:-2]) >= 128
    assert overhead["cpu"].endswith("m")
    assert "overhead" not in by_name["kuasar-runc"], "runc pods cost nothing beyond their containers"


def test_a_pod_example_per_type() -> None:
    classes = {d["metadata"]["name"] for d in yaml.safe_load_all((DOCS / "k8s" / "runtimeclasses.yaml").read_text())}
    for t in TYPES:
        (pod,) = list(yaml.safe_load_all((DOCS / "k8s" / ("pod-%s.yaml" % t)).read_text()))
        assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
        assert pod["spec"]["runtimeClassName"] == "kuasar-" + t in classes
        assert pod["spec"]["containers"] and all(c["image"] for c in pod["spec"]["containers"])


def test_kubernetes_doc_links_the_manifests() -> None:
    text = (DOCS / "kubernetes.md").read_text()
    for name in ("runtimeclasses.yaml", "pod-runc.yaml", "containerd.md"):
        assert name in text
