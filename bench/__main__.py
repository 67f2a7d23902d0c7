"""`python -m bench` (or `make bench`): run every benchmark and print its figures."""

import asyncio

from bench import ack_latency, cache_hit, crash, fairness, saturation, store_queue

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
