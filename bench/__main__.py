"""`python -m bench` (or `make bench`): run every benchmark and print its figures."""

import asyncio

from bench import cache_hit

asyncio.run(cache_hit.run(requests=40, latency=2.0))
