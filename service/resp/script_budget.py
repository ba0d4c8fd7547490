"""Each tenant's share of the event loop for its scripts: a token bucket of script seconds.

A script holds the event loop every tenant shares for as long as it runs (that is what makes it atomic), and the
time limit bounds one script, not a tenant. An audit had one tenant loop a 500 ms script on N connections: the
loop was held all the time, another tenant's GETs took 0.5-1.5 s each, and the rate quota counted each script as
one request. So a tenant's scripts also draw on a budget of loop time: each run (and each compile) is charged
what it actually took, after it ran, and while the budget is spent the tenant's EVAL, EVALSHA, their _RO forms
and SCRIPT LOAD are refused at once, without running, whatever connection they come from.

The numbers:

- refill 100 ms a second (script_budget_ms_per_s, the default): one tenant's scripts hold the loop 10% of the
  time at most in the long run, and the other tenants keep the rest. Scripts that do a few redis.calls cost 5-25 us
  of loop time (`python -m service.bench.scripts`), so this is 4,000-20,000 such scripts a second: a tenant meets
  it with long scripts, or with so many short ones that they alone take a tenth of the server's time.
- burst 500 ms (script_budget_burst_ms): what a tenant that has been quiet for 5 s may spend at once (a job that
  runs a few thousand short scripts in a row, or one script to the default 500 ms time limit) before it is paced
  to the refill rate. With the debt below, an attacker's first turn holds the loop for at most 1 s (two scripts,
  100 ms apart), and after that for one script every 5 s.
- Debt: a script is admitted while the bucket holds `ADMIT_S`, and one admitted then may still run to its time
  limit (one script's bound is the time limit, as before); the bucket goes below zero and the tenant's scripts
  wait until it is repaid, which the refusal says. Over any T seconds a tenant's scripts hold the loop at most
  burst + refill x T + one time limit, however many connections it uses: the loop runs one script
  at a time, and each is charged before the next is admitted.
- `ADMIT_S` = 0.01, not any crumb: a script that empties the bucket leaves the tenant 100 ms of refusals, in which
  the requests other tenants sent meanwhile are served. Admitting on any crumb, a second 500 ms script could start
  in the same turn of the loop as the first ended, and the others waited 1 s at once.

The refusal is Redis's `BUSY` code, which Redis answers while a script holds the server: the same cause, and
clients that know the code (Jedis, Lettuce and Redisson each have a busy exception) surface it as such. redis-py
raises a plain ResponseError and retries nothing; TRYAGAIN would be retried by its cluster client by itself, and
LOADING is a ConnectionError there, which its retry logic may reconnect on. The text says why and when to retry.
"""

from __future__ import annotations

import math

ADMIT_S = 0.01  # what the bucket must hold for a script to start


class ScriptBudget:
    """One tenant's bucket of script seconds, refilled lazily whenever it is asked or charged. `refill_per_s` and
    `burst_s` are the settings script_budget_ms_per_s and script_budget_burst_ms (defaults 0.1 and 0.5 above)."""

    __slots__ = ("_burst_s", "_last", "_level", "_refill_per_s")

    def __init__(self, now: float, refill_per_s: float, burst_s: float) -> None:
        self._refill_per_s, self._burst_s = refill_per_s, burst_s
        self._level = burst_s
        self._last = now

    def refusal(self, now: float) -> str | None:
        """The error line while the budget is spent, else None (the script may run)."""
        refill, burst = self._refill_per_s, self._burst_s
        level = self._level + (now - self._last) * refill  # refilled lazily: every EVAL asks, so stay cheap
        self._level = level = level if level < burst else burst
        self._last = now
        if level >= ADMIT_S:
            return None
        retry_ms = max(1, math.ceil((ADMIT_S - level) / refill * 1000))
        return (f"BUSY this tenant's scripts have used their share of the server's time ({refill * 1000:g} ms "
                f"a second, {burst * 1000:g} ms at once): retry in {retry_ms} ms")

    def charge(self, started: float, ended: float) -> None:
        """Take what a script (or its compile) held the loop for; the bucket refills up to `ended` first, so the
        time the script itself ran earns nothing past a full bucket."""
        level = self._level + (ended - self._last) * self._refill_per_s
        self._level = (level if level < self._burst_s else self._burst_s) - (ended - started)
        self._last = ended
