"""Under load nothing is lost: a burst of 500 messages over 50 channels through the fake Discord.

The model is scripted and fast, behind a real ModelWorker with a bounded queue, so some
replies find it full and are told the bot is busy. Every message must get exactly one
answer (the model's or the busy message), every answered turn must be stored once (a busy-refused
message not at all: its author is asked to send it again), and each
channel's replies must come in the order its messages were sent. Counts only: the timings
are for bench/load_bench.py.
"""

from tests.support.load import run_burst


async def test_a_burst_of_500_messages_over_50_channels_loses_nothing(tmp_path):
    # The model answers nothing until the queue has filled and someone was told the bot is busy.
    report = await run_burst(tmp_path / "bot.db", channels=50, per_channel=10, users=10, max_waiting=10,
                             model_delay_s=0.03, hold_answers_until_busy=True)
    summary = "\n".join(report.lines())
    assert report.sent == 500, summary
    assert (report.lost, report.duplicated, report.out_of_order, report.other) == (0, 0, 0, 0), summary
    assert report.answered + report.busy == report.sent, summary
    assert report.answered > 0 and report.busy > 0, summary  # both paths were taken
    assert (report.stored_lost, report.stored_duplicated, report.stored_out_of_order, report.stored_refused) == \
        (0, 0, 0, 0), summary
