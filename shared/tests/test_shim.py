"""shim: the containerd-shim-kuasar-<type>-v1 entry point answers -info and delete like a v2 shim.

The argv used below are the exact invocations containerd 2.3.4 made in
shared/tests/conformance/containerd-2.3.4/d_restart_shim_binary/shim-binary-invocations.txt.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

from kuasar_shared.api.containerd.runc.options import oci_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.shim import FEATURES_TYPE_URL, binary_name, runtime_features, runtime_name, shim_main

DELETE_ARGV = ["-namespace", "k8s.io", "-address", "/var/lib/ctrd/containerd/containerd.sock", "-publish-binary",
               "/var/lib/ctrd/bin/containerd", "-id",
               "585de46a3752058c17df1cbb0237513002e1b7efe661b90f397aab029a6bafbb", "-bundle",
               "/var/lib/ctrd/containerd/state/io.containerd.runtime.v2.task/k8s.io/"
               "585de46a3752058c17df1cbb0237513002e1b7efe661b90f397aab029a6bafbb", "delete"]


def _runtime_info_class():
    """containerd.types.RuntimeInfo from api/types/introspection.proto, built independently of
    the encoder under test, in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(name="introspection.proto", package="containerd.types",
                                             dependency=["google/protobuf/any.proto"], syntax="proto3")
    ver = fdp.message_type.add(name="RuntimeVersion")
    ver.field.add(name="version", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    ver.field.add(name="revision", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    info = fdp.message_type.add(name="RuntimeInfo")
    info.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    info.field.add(name="version", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".containerd.types.RuntimeVersion")
    info.field.add(name="options", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".google.protobuf.Any")
    info.field.add(name="features", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".google.protobuf.Any")
    pool.Add(fdp)
    desc = pool.FindMessageTypeByName("containerd.types.RuntimeInfo")
    try:
        from google.protobuf.message_factory import GetMessageClass
        return GetMessageClass(desc)
    except ImportError:  # protobuf < 4.21
        from google.protobuf.message_factory import MessageFactory
        return MessageFactory(pool).GetPrototype(desc)


def call(argv, stdin: bytes = b""):
    out, err = io.BytesIO(), io.StringIO()
    code = shim_main("runc", argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_names() -> None:
    assert runtime_name("runc") == "io.containerd.kuasar-runc.v1"
    assert binary_name("runc") == "containerd-shim-kuasar-runc-v1"


def test_info_without_options() -> None:
    code, out, err = call(["-info"])
    assert code == 0 and err == ""
    info = _runtime_info_class()()
    info.ParseFromString(out)
    assert info.name == "io.containerd.kuasar-runc.v1"
    assert info.version.version
    assert not info.HasField("options")


def test_info_echoes_runtime_options() -> None:
    opts = any_pb2.Any()
    opts.Pack(oci_pb2.Options(binary_name="runc", root="/run/runc"), type_url_prefix="")
    code, out, _ = call(["--info"], opts.SerializeToString())
    assert code == 0
    info = _runtime_info_class()()
    info.ParseFromString(out)
    assert info.options.type_url.endswith("containerd.runc.v1.Options")
    echoed = oci_pb2.Options()
    echoed.ParseFromString(info.options.value)
    assert echoed.binary_name == "runc"


def test_info_ignores_garbage_options() -> None:
    code, out, _ = call(["-info"], b"\xff\xff\xff")
    assert code == 0
    info = _runtime_info_class()()
    info.ParseFromString(out)
    assert info.name == "io.containerd.kuasar-runc.v1" and not info.HasField("options")


def test_delete_prints_delete_response() -> None:
    before = time.time()
    code, out, err = call(DELETE_ARGV)
    assert code == 0 and err == ""
    resp = shim_pb2.DeleteResponse()
    resp.ParseFromString(out)
    assert resp.exit_status == 137
    assert before - 1 <= resp.exited_at.seconds <= time.time() + 1


def test_version() -> None:
    code, out, _ = call(["-v"])
    assert code == 0 and b"containerd-shim-kuasar-runc-v1" in out and b"Version:" in out


def test_start_and_serving_are_refused() -> None:
    code, out, err = call(["-namespace", "k8s.io", "-id", "x", "start"])
    assert code == 1 and out == b"" and "does not start shims" in err
    code, out, err = call(["-namespace", "k8s.io", "-id", "x"])
    assert code == 1 and out == b"" and "only answers -info" in err


def test_bad_flags() -> None:
    assert call(["-bogus"])[0] == 2
    code, _, err = call(["-namespace"])
    assert code == 2 and "flag needs an argument" in err


def test_as_a_real_binary_on_path(tmp_path) -> None:
    """What containerd does: exec the resolved binary with a pipe on stdin, read stdout."""
    binary = tmp_path / binary_name("runc")
    binary.write_text("#!%s\nimport sys\nfrom kuasar_shared.shim import shim_main\n"
                      "sys.exit(shim_main('runc'))\n" % sys.executable)
    os.chmod(binary, 0o755)
    info = subprocess.run([str(binary), "-info"], input=b"", capture_output=True, timeout=30)
    assert info.returncode == 0
    msg = _runtime_info_class()()
    msg.ParseFromString(info.stdout)
    assert msg.name == "io.containerd.kuasar-runc.v1"
    delete = subprocess.run([str(binary), *DELETE_ARGV], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert delete.returncode == 0
    resp = shim_pb2.DeleteResponse()
    resp.ParseFromString(delete.stdout)
    assert resp.exit_status == 137


def test_info_reports_the_runtime_features_containerd_reads() -> None:
    """containerd's CRI enables recursive read-only mounts for a handler whose -info features
    list ``rro`` (runc >= 1.1 does), decoding the Any by FEATURES_TYPE_URL as JSON."""
    out, err = io.BytesIO(), io.StringIO()
    assert shim_main("runc", ["-info"], stdin=io.BytesIO(b""), stdout=out, stderr=err, runtime="runc") == 0
    info = _runtime_info_class()()
    info.ParseFromString(out.getvalue())
    assert info.features.type_url == FEATURES_TYPE_URL
    features = json.loads(info.features.value)
    assert features == json.loads(runtime_features("runc") or b"null")
    assert "rro" in features["mountOptions"]


def test_info_features_follow_binary_name_and_vanish_without_a_runtime(tmp_path) -> None:
    fake = tmp_path / "my-runc"
    fake.write_text('#!/bin/sh\n[ "$1" = features ] && echo \'{"mountOptions": ["ro"]}\'\n')
    os.chmod(fake, 0o755)
    opts = any_pb2.Any()
    opts.Pack(oci_pb2.Options(binary_name=str(fake)), type_url_prefix="")
    out = io.BytesIO()
    shim_main("runc", ["-info"], stdin=io.BytesIO(opts.SerializeToString()), stdout=out, stderr=io.StringIO(),
              runtime="runc")
    info = _runtime_info_class()()
    info.ParseFromString(out.getvalue())
    assert json.loads(info.features.value) == {"mountOptions": ["ro"]}
    assert runtime_features(str(tmp_path / "missing")) is None
    fake.write_text("#!/bin/sh\necho not-json\n")
    assert runtime_features(str(fake)) is None
    code, out_bytes, _ = call(["-info"])  # a sandbox type without an OCI runtime reports none
    info = _runtime_info_class()()
    info.ParseFromString(out_bytes)
    assert code == 0 and not info.HasField("features")
