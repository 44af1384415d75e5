"""Overload on the real broker: 5x the pipeline's capacity for 60 s; memory stays bounded.

How the overload is made. For the burst and the overload every stage process runs only
``SHARE`` of the time (``cpu_quota``: SIGSTOP and SIGCONT in a 400 ms period, like a
container's CPU quota), and the pipeline's capacity under that quota is measured in the same run:
the steady rate of predictions (without ramp-up and tail) after a burst of events. Events then
arrive at five times that rate for 60 s, and the quota is lifted when the input stops, so the
backlog drains at full capacity. Why: at full capacity five times the input is more than one
Python producer sends while sharing the CPUs with the pipeline, and the backlog (four minutes of
capacity) would take over four minutes to drain. A quota keeps every per-event cost as it is, so
the stages run at their own limit, with full queues and batches, only slower. A slow model
(``tidegate.models.faults``) does not suit: it sleeps per call, and the stages put more events
into each call as the backlog grows, so the capacity it leaves is no fixed number. The model's
slow-call breaker is set out of reach: the quota stops a process in the middle of a model call,
which then takes four times its time or more; that is the quota, not a slow model, and if the
breaker moved inference to the cheaper fallback model the capacity would change under the test.

The bound on each stage's peak RSS (``VmHWM``) is its idle RSS after the warm-up plus what each
bounded buffer may add (``tests.chaos.load.memory_bounds`` computes and prints it):

- prefetch: the ``BatchReader`` queue, ``queued.max.messages.kbytes`` of payload, overshot by the
  fetch responses in flight (3 x ``max.partition.fetch.bytes`` x 6 partitions). On the input
  topic the queue holds at most ``queued.min.messages`` (10,000) records, each costing its key
  and value plus about 570 bytes of librdkafka bookkeeping.
- batch: a reader batch takes at most ``TIDEGATE_BATCH_SIZE / 64`` internal messages of at most
  512 KiB (``tidegate.kafka.reader.batch_messages``), and only what the queue holds; it lives as
  message values, decoded envelopes and fields (the expansion is measured here with the stages' own
  code), and outputs of up to 1.5 times its
  bytes (feature vectors), once in Python and once in the producer until the broker acks them
  (``Outbox.send_all`` awaits every batch, so the producer holds one batch at a time).
- ingest's de-duplication window: one id per event ingested (at most 500,000), measured bytes.
- feature's state: one full rolling state per account (at most
  ``TIDEGATE_FEATURE_STATE_MAX_ACCOUNTS``), measured bytes.
- faust: each stage still reads the control topic (monitoring: the health topic) with Faust,
  ``stream_buffer_maxsize`` records plus one ``consumer_max_fetch_size`` fetch per partition.
- slack: 16 MiB per stage for what every stage keeps whatever the load.

Conservation: every good event is predicted exactly once, every bad one is dead-lettered exactly
once by the stage and with the code its kind names, and no stage restarted.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.load import (
    DATA_STAGES,
    Sampler,
    cpu_quota,
    measure_footprints,
    memory_bounds,
    prediction_times,
    produce_paced,
    steady_rate,
)
from tests.integration.pipeline import (
    expectations,
    health_events,
    produce,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.example.badrecords import ALL_KINDS
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos

OVERLOAD = 5.0
WINDOW_SECONDS = 60.0
SHARE = 0.08  # of the time the stages may run: 5x its capacity stays producible from Python
BURST = 15_000
ACCOUNTS = 2000
BAD_RATE = 0.01
_KINDS = [kind for kind in ALL_KINDS if kind.name != "duplicate_event_id"]


def test_five_times_capacity_for_a_minute_keeps_memory_bounded_and_drains(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_BREAKER_SLOW_CALL_SECONDS", "3600")
    began = time.monotonic()
    footprints = measure_footprints(list(example_messages(2000, seed=60, accounts=ACCOUNTS)),
                                    pipeline_settings.batch_size)
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        warm = produce(pipeline_settings, example_messages(
            2000, seed=61, bad_rate=BAD_RATE, kinds=_KINDS, accounts=ACCOUNTS))
        wait_for_outputs(pipeline_settings, len(warm), supervisor=supervisor)
        with Sampler(pipeline_settings, supervisor) as sampler:
            time.sleep(2.0)
            idle = dict(sampler.rss_mb)
            with cpu_quota(supervisor, SHARE):
                burst_at = time.time()
                burst = produce(pipeline_settings, example_messages(
                    BURST, seed=62, bad_rate=BAD_RATE, kinds=_KINDS, accounts=ACCOUNTS,
                    events_per_second=1e6))
                done = sampler.wait_for_zero_lag(time.monotonic(), timeout=180,
                                                 poll=[supervisor])
                assert done is not None, f"the burst was never processed: {sampler.lag}"
                capacity = steady_rate(prediction_times(pipeline_settings, since=burst_at))
                rate = OVERLOAD * capacity
                sent, sending = produce_paced(pipeline_settings, example_messages(
                    int(rate * WINDOW_SECONDS), seed=63, bad_rate=BAD_RATE, kinds=_KINDS,
                    accounts=ACCOUNTS, events_per_second=rate), rate=rate)
                stopped = time.monotonic()
                waiting = dict(sampler.lag)
            drained = sampler.wait_for_zero_lag(stopped, timeout=300, poll=[supervisor])
            assert drained is not None, f"the lag never drained: {sampler.lag}"
            time.sleep(3.0)
            settled = sampler.lag_at
            while sampler.lag_at <= settled:
                time.sleep(0.2)
            after = dict(sampler.lag)
            everything = warm + burst + sent
            outputs = wait_for_outputs(pipeline_settings, len(everything),
                                       supervisor=supervisor, timeout=60)
        restarts = {name: child.restarts for name, child in supervisor.children.items()}
        slowest: dict[str, float] = {}
        for event in health_events(pipeline_settings):
            handle = float(event["extra"].get("handle_ms_per_batch", 0.0))
            slowest[event["stage"]] = max(slowest.get(event["stage"], 0.0), handle)
    predicted, dead = expectations(everything)
    bounds, derivation = memory_bounds(pipeline_settings, idle, footprints,
                                       events=len(everything), accounts=ACCOUNTS)
    produced = len(sent) / sending
    took = (len(sent) - waiting.get("ingest", 0)) / sending
    print(f"\noverload: {len(sent):,} events in {sending:.1f} s = {produced:,.0f} events/s "
          f"(asked {rate:,.0f} = {OVERLOAD:.0f} x capacity)")
    print(f"capacity: {capacity:,.0f} events/s with the stages running {SHARE:.0%} of the "
          f"time (steady rate of a burst of {BURST:,}); during the overload the pipeline took "
          f"{took:,.0f} events/s off the input topic, {produced / took:.1f} x less than came in")
    print("bound = idle RSS + what each bounded buffer may add (MiB):")
    for line in derivation:
        print(f"  {line}")
    for stage, bound in bounds.items():
        peak = sampler.peak_rss_mb[stage]
        print(f"  {bound.render()}; peak {peak:.0f} MiB ({peak / bound.total_mb:.0%})")
    print(f"peak lag: {sampler.peak_lag.get('ingest', 0):,} events on the input topic; "
          "internal topics (batch messages): " + ", ".join(
              f"{s} {sampler.peak_lag.get(s, 0)}" for s in DATA_STAGES[1:]))
    print(f"drain: {drained - stopped:.1f} s after the input stopped, at full capacity, with "
          f"{waiting.get('ingest', 0):,} events waiting then ({waiting}); lag 3 s later: {after}")
    print("slowest batch (1 s average of handler time): " + ", ".join(
        f"{s} {ms:.0f} ms" for s, ms in slowest.items()))
    print(f"outputs: {sum(outputs.predictions.values()):,} predictions {dict(outputs.paths)}, "
          f"{sum(outputs.dead.values())} dead letters; {time.monotonic() - began:.0f} s in all")

    # The producer shares the cores with the broker and the pipeline, and on a loaded machine
    # sends somewhat under the asked rate: four times the capacity is still an overload.
    assert produced >= 4 * capacity, "the input did not arrive at four times the capacity"
    assert waiting.get("ingest", 0) > len(sent) / 2, "the pipeline was not overloaded"
    assert restarts == dict.fromkeys(restarts, 0), f"a stage restarted: {restarts}"
    assert all(len(pids) == 1 for pids in sampler.pids.values()), sampler.pids
    for stage, bound in bounds.items():
        assert sampler.peak_rss_mb[stage] < bound.total_mb, f"{stage} over its bound"
    assert not any(after.values()), f"the lag grew again after draining: {after}"
    missing = set(predicted) - set(outputs.predictions)
    assert not missing, f"{len(missing)} good events have no prediction"
    assert outputs.predictions == predicted, "a good event was predicted more than once"
    assert outputs.dead == dead, "dead letters differ from the bad events sent"
