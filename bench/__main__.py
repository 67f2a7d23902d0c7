"""`python -m bench` (or `make bench`): run every benchmark and print its figures."""

import asyncio

from bench import ack_latency, cache_hit, crash, fairness, loop_lag, memory, overhead, saturation, store_queue

asyncio.run(ack_latency.run(requests=200, rate=50.0))
print()
asyncio.run(cache_hit.run(requests=40, latency=2.0))
print()
saturation.run()
print()
asyncio.run(store_queue.run())
print()
fairness.run()
print()
crash.run(crash.parse([]))
print()
overhead.run(jobs=30, rate=2.0, latency=1.0, concurrency=4)
print()
loop_lag.run(backlog=120, burst_count=300, rate=50.0, idle_s=20.0, rpm=600, concurrency=4, latency=0.5, mib=4.0)
print()
memory.run(runs=5)
