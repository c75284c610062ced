"""router.collection.locks.InFlight: settled(e) waits for what began before epoch e, and nothing else."""
import asyncio

from router.collection.locks import InFlight


def test_settled_waits_for_older_epochs_only():
    async def scenario():
        gate = InFlight()
        release_old, release_new = asyncio.Event(), asyncio.Event()

        async def hold(epoch, release):
            async with gate.hold(epoch):
                await release.wait()

        old = asyncio.create_task(hold(1, release_old))
        new = asyncio.create_task(hold(2, release_new))
        await asyncio.sleep(0)  # yield: both holds are taken
        waiter = asyncio.create_task(gate.settled(2))
        while not gate.waiting:
            await asyncio.sleep(0)
        assert not waiter.done()
        release_old.set()
        await waiter  # epoch 2 still in flight: not waited for
        assert not new.done() and gate.waiting == 0
        await gate.settled(1)  # nothing before epoch 1
        release_new.set()
        await asyncio.gather(old, new)

    asyncio.run(scenario())
