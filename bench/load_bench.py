"""Load: a burst of 500 messages over 50 channels, through the fake Discord, into the real bot.

The model is scripted (an echo taking 30 ms) behind the real ModelWorker with a bounded queue
(max_waiting 20), so what is measured is the bot around the model: the Discord client,
the per-channel queues, the database, the busy path. Prints how many messages were
answered, refused as busy, lost, duplicated or answered out of order (the last three
must be 0), and the time from a message reaching Discord to its reply being posted.

    python -m bench load
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.support.load import run_burst

CHANNELS, PER_CHANNEL, USERS, MAX_WAITING, MODEL_DELAY_S = 50, 10, 10, 20, 0.03


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        report = await run_burst(Path(folder) / "load.db", channels=CHANNELS, per_channel=PER_CHANNEL,
                                 users=USERS, max_waiting=MAX_WAITING, model_delay_s=MODEL_DELAY_S)
        elapsed = time.monotonic() - started
    print(f"load: {CHANNELS} channels x {PER_CHANNEL} messages, {USERS} users, scripted model, "
          f"{MODEL_DELAY_S * 1000:.0f} ms a reply, max_waiting {MAX_WAITING}")
    for line in report.lines():
        print("  " + line)
    print(f"  whole run: {elapsed:.1f} s ({report.sent / elapsed:.0f} messages/s including set-up)")
