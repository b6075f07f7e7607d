"""Settings for every test: hypothesis without its per-example deadline.

A deadline fails an example that took longer than 200 ms, which on the shared 2-core
machine happens to any example when another process takes the CPU (the suite saw a 0.7 ms
example take 346 ms): a timed assertion, which does not belong in the test suite
(performance is measured in perf/).  Each property still runs its examples in full."""

from hypothesis import settings

settings.register_profile("ronda", deadline=None)
settings.load_profile("ronda")
