"""crictl config files: the conformance inputs parse; bad files give errors naming file and key."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kuasar_shared.ctl import config
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.testing.traces import ENGINE, default_conformance_dir

INPUTS = os.path.join(default_conformance_dir(str(Path(__file__).resolve().parents[3])), ENGINE, "inputs")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["pod-a.json", "pod-b.json", "pod-c.json", "pod-d.json", "pod-e.json"])
def test_conformance_pod_configs_parse(name):
    pod = config.load_pod_config(os.path.join(INPUTS, name))
    assert pod.metadata.name.startswith("conf-")
    assert pod.linux.cgroup_parent.startswith("/conformance-")


def test_pod_namespace_modes():
    b = config.load_pod_config(os.path.join(INPUTS, "pod-b.json"))
    assert config.pod_namespace_options(b) == config.NamespaceOptions(network=2, pid=0, ipc=0)


@pytest.mark.parametrize("name", ["ctr-a.json", "ctr-b.json", "ctr-c.json"])
def test_conformance_container_configs_parse(name):
    ctr = config.load_container_config(os.path.join(INPUTS, name))
    assert ctr.name == "app"
    assert ctr.command == ("/bin/sh", "-c") and ctr.args == ("echo started; sleep 3600",)
    assert ctr.envs == (("FOO", "bar"), ("GREETING", "hello world"))
    assert ctr.mounts[0].readonly and ctr.mounts[0].container_path == "/data"
    assert ctr.resources.memory_limit_in_bytes == 134217728 and ctr.resources.cpu_shares == 512
    assert ctr.namespace_options is not None


def test_yaml_container_with_names_for_enums(tmp_path):
    path = _write(tmp_path, "c.yaml", """
metadata: {name: web}
image: {image: busybox}
command: [sleep, "10"]
linux:
  security_context:
    namespace_options: {network: NODE, pid: container}
""")
    ctr = config.load_container_config(path)
    assert ctr.namespace_options == config.NamespaceOptions(network=2, pid=1, ipc=0)


def test_container_without_namespace_options_inherits_pod(tmp_path):
    ctr = config.load_container_config(_write(tmp_path, "c.yaml", "metadata: {name: x}\nimage: {image: busybox}\n"))
    pod = config.load_pod_config(os.path.join(INPUTS, "pod-b.json"))
    assert ctr.namespace_options is None
    assert config.effective_namespace_options(ctr, pod).network == 2


@pytest.mark.parametrize("name,text,needle", [
    ("bad.json", "{not json", "bad.json: not valid JSON"),
    ("bad.yaml", "metadata: [unclosed", "bad.yaml: not valid YAML"),
    ("list.yaml", "- a\n- b\n", "list.yaml: expected a mapping"),
    ("noname.yaml", "image: {image: busybox}\n", "noname.yaml: metadata.name is required"),
    ("noimage.yaml", "metadata: {name: x}\n", "noimage.yaml: image.image is required"),
    ("type.yaml", "metadata: {name: x}\nimage: {image: b}\ncommand: sleep\n", "type.yaml: command: expected a list"),
    ("res.yaml", "metadata: {name: x}\nimage: {image: b}\nlinux: {resources: {cpu_shares: lots}}\n",
     "res.yaml: linux.resources.cpu_shares: expected an integer"),
    ("mnt.yaml", "metadata: {name: x}\nimage: {image: b}\nmounts: [{container_path: data, host_path: /x}]\n",
     "mnt.yaml: mounts[0]: expected absolute"),
])
def test_bad_container_files_name_the_file(tmp_path, name, text, needle):
    with pytest.raises(InvalidArgument) as err:
        config.load_container_config(_write(tmp_path, name, text))
    assert needle in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_file():
    with pytest.raises(InvalidArgument, match="/nonexistent/pod.yaml: cannot read"):
        config.load_pod_config("/nonexistent/pod.yaml")


def test_pod_wrong_type_names_file(tmp_path):
    path = _write(tmp_path, "pod.yaml", "metadata: {name: p}\nlinux: {cgroup_parent: [1]}\n")
    with pytest.raises(InvalidArgument, match="pod.yaml"):
        config.load_pod_config(path)


def test_pod_unknown_field_is_dropped_with_warning(tmp_path, caplog):
    path = _write(tmp_path, "pod.yaml", "metadata: {name: p}\nwindows: {}\n")
    with caplog.at_level(logging.WARNING):
        pod = config.load_pod_config(path)
    assert pod.metadata.name == "p"
    assert "windows" in caplog.text and "pod.yaml" in caplog.text
