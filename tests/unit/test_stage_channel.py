"""The training stage's channel: its actor process loads no torch or pydantic, and it hands over what it is given."""

import asyncio
import subprocess
import sys

from sami_ray.train.channel import StageChannel


def test_the_channel_module_loads_neither_torch_nor_the_config():
    # Each stage starts the channel's process beside Ray Train's controller; torch alone is about 1.7 s of CPU.
    code = ("import sys, sami_ray.train.channel; "
            "print(','.join(m for m in ('torch', 'pydantic', 'sami_ray.config', 'sami_ray.train.trainer') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", out.stdout


def test_the_examples_wait_until_given_and_reports_come_back_in_step_order():
    async def scenario():
        channel = StageChannel()
        waiting = asyncio.ensure_future(channel.wait_examples())
        await asyncio.sleep(0)
        assert not waiting.done()
        await channel.give({"path": "samples.jsonl", "num_examples": 3})
        assert await waiting == {"path": "samples.jsonl", "num_examples": 3}
        for step in (16, 8, 8):  # a restarted group re-sends step 8: the latest wins
            await channel.add({"step": step, "loss": float(step)})
        await channel.add_step({"step": 17})
        return await channel.all(), await channel.latest_step()

    reports, latest = asyncio.run(scenario())
    assert [r["step"] for r in reports] == [8, 16] and latest == {"step": 17}
