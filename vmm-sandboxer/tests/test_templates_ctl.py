"""vmm-templates / kuasar-ctl templates: lists and removes the templates of a config's template_dir."""
import json
import os

from kuasar_vmm_sandboxer.templates_ctl import main


def _config(tmp_path, template_dir):
    path = tmp_path / "config_qemu.toml"
    path.write_text('[hypervisor]\ntemplate = "auto"\ntemplate_dir = "%s"\n' % template_dir)
    return str(path)


def _template(template_dir, digest, memory_mb):
    d = os.path.join(template_dir, digest)
    os.makedirs(d)
    for name in ("memory", "state"):
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"x" * 4096)
    with open(os.path.join(d, "template.json"), "w") as f:
        json.dump({"created": "2026-12-05T00:00:0%dZ" % memory_mb, "build_seconds": 7.5,
                   "key": {"vcpus": 1, "memory_mb": memory_mb, "nics": 1}}, f)


def test_list_and_remove(tmp_path, capsys):
    tdir = str(tmp_path / "templates")
    _template(tdir, "a" * 64, 1)
    _template(tdir, "b" * 64, 2)
    os.makedirs(os.path.join(tdir, ".b-cccccccccccc"))  # half-made: not listed
    cfg = _config(tmp_path, tdir)
    assert main(["--config", cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DIGEST", "CREATED", "VCPUS"]
    assert [line.split()[0] for line in lines[1:]] == ["a" * 12, "b" * 12]
    assert main(["--config", cfg, "rm", "aaa"]) == 0
    assert capsys.readouterr().out.split() == ["a" * 64]
    assert main(["--config", cfg, "rm", "aaa"]) == 1
    assert "no template aaa*" in capsys.readouterr().err
    assert main(["--config", cfg, "rm"]) == 2
    assert main(["--config", cfg, "rm", "--all"]) == 0
    assert os.listdir(tdir) == []


def test_a_bad_config_is_named(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
