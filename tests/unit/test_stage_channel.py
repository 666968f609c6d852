"""The training stage's channel: its module loads neither torch nor the config, and it hands over what it is
given."""

import asyncio

from sami_ray.train.channel import StageChannel
from tests.support.imports import loaded_with


def test_the_channel_module_loads_neither_torch_nor_the_config():
    # Each stage starts the channel's process beside Ray Train's controller; torch alone is about 1.7 s of CPU.
    assert loaded_with("sami_ray.train.channel",
                       ("torch", "pydantic", "sami_ray.config", "sami_ray.train.trainer")) == []


def test_the_examples_wait_until_given_and_reports_come_back_in_step_order():
    async def scenario():
        channel = StageChannel()
        waiting = asyncio.ensure_future(channel.wait_examples())
        await asyncio.sleep(0)
        assert not waiting.done()
        await channel.give({"path": "samples.jsonl", "num_examples": 3})
        assert await waiting == {"path": "samples.jsonl", "num_examples": 3}
        # A restarted group re-sends step 8 (with what it computed again): the latest report wins.
        for step, loss in ((16, 0.5), (8, 0.7), (8, 0.6)):
            await channel.add({"step": step, "loss": loss})
        await channel.add_step({"step": 17})
        return await channel.all(), await channel.latest_step()

    reports, latest = asyncio.run(scenario())
    assert [(r["step"], r["loss"]) for r in reports] == [(8, 0.6), (16, 0.5)] and latest == {"step": 17}
