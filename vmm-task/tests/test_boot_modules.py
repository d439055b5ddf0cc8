"""boot.later_modules_loaded: the agent's wait for the kernel modules stage 1 loads beside its start-up."""
import asyncio
import logging

from kuasar_vmm_task.boot import later_modules_loaded


def _live(sys_module, name):
    (sys_module / name).mkdir(parents=True)
    (sys_module / name / "initstate").write_text("live\n")


async def test_waits_until_every_listed_module_is_live(tmp_path):
    names = tmp_path / "modules.later"
    names.write_text("overlay\nbridge\n")
    sys_module = tmp_path / "sys"
    _live(sys_module, "overlay")
    (sys_module / "bridge").mkdir(parents=True)
    (sys_module / "bridge" / "initstate").write_text("coming\n")  # loading: not yet

    async def finish_loading():
        await asyncio.sleep(0.2)
        (sys_module / "bridge" / "initstate").write_text("live\n")

    loader = asyncio.ensure_future(finish_loading())
    loop = asyncio.get_running_loop()
    begin = loop.time()
    assert await later_modules_loaded(str(names), str(sys_module), timeout=10.0) is True
    assert loop.time() - begin >= 0.2
    await loader


async def test_gives_up_naming_what_is_missing(tmp_path, caplog):
    names = tmp_path / "modules.later"
    names.write_text("overlay\nbridge\n")
    _live(tmp_path / "sys", "overlay")
    with caplog.at_level(logging.WARNING):
        assert await later_modules_loaded(str(names), str(tmp_path / "sys"), timeout=0.1) is False
    assert "kernel modules bridge not loaded after 0 s" in caplog.text


async def test_no_list_means_nothing_to_wait_for(tmp_path):
    assert await later_modules_loaded(str(tmp_path / "absent"), str(tmp_path / "sys"), timeout=0.0) is True
