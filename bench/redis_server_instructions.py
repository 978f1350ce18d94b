"""Server instructions per script call: the store's scripts, their floor, and variants of the
store's library with one part left out, counted by callgrind inside redis-server.

    .venv/bin/python bench/redis_server_instructions.py                # depth 3, ~5 minutes
    .venv/bin/python bench/redis_server_instructions.py --depths 1,3,6 --calls 100
    .venv/bin/python bench/redis_server_instructions.py --keyed --only store,floor

Time on this shared 2-core machine moves by tens of percent from run to run (see
redis_floor.py); the instructions a script call executes do not. This starts its own
redis-server under `valgrind --tool=callgrind` (`--hz 1`, so the server's timer adds little),
and for each script zeroes the counters, makes `--calls` calls with the store's own payloads
(one tenant, a USD budget on each of `depth` scopes, as redis_ops.py), dumps the counters and
divides. Every call's reply is checked. The figures include what the server does around a
script (reading the command, the reply): compare them with each other, not with a trivial
script's. With `--keyed` every reserve and commit carries an idempotency key of its own (new
to the store, as each HTTP request's), so the store also writes the replay record; the floor
has no such record.

- store: the store's reserve and commit (FCALL of its library);
- floor: bench/redis_floor.lua, the same Redis commands without the store's features;
- the store's library with one part left out (each its own library, loaded beside it), to
  price that part: the plain paths of reserve and commit (every call then takes the general
  evaluation), the definitions kept decoded across calls, the required-dimension check
  (access rules and required templates), the usage counters, the read of the webhook
  subscriptions, and for scale the report counters, the audit entry and the
  due-reservation lookup.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import redis_ops as shared  # the budgets, payloads and subjects of the main Redis bench

import allotment as al
from allotment.reservation import commit_op
from allotment.stores.redis import RedisStore
from allotment.stores.redis.functions import library

FLOOR_LUA = Path(__file__).with_name("redis_floor.lua")


def _left_out(signature: str, value: str = "") -> Callable[[str], str]:
    """The library with the function declared by `signature` returning at once."""
    def patch(text: str) -> str:
        line = signature + "\n"
        if line not in text:
            raise SystemExit(f"not in the library: {signature}")
        return text.replace(line, f"{line}  do return {value} end\n", 1)
    return patch


def _replaced(old: str, new: str) -> Callable[[str], str]:
    """The library with every `old` replaced by `new`."""
    def patch(text: str) -> str:
        if old not in text:
            raise SystemExit(f"not in the library: {old}")
        return text.replace(old, new)
    return patch


def _both(*patches: Callable[[str], str]) -> Callable[[str], str]:
    def patch(text: str) -> str:
        for one in patches:
            text = one(text)
        return text
    return patch


VARIANTS: dict[str, Callable[[str], str]] = {
    "no plain paths": _replaced("local function plain()\n",
                                "local function plain()\n  do return nil end\n"),
    "no kept definitions": _replaced("local memo = SHARE_DEFS and DEF_MEMO[scope]",
                                     "local memo = false"),
    "no required-dim check": _both(
        _left_out("local function missing_dims(scopes, dims, rules)", "nil"),
        _left_out("local function access_rules(scopes, exists)", "{}")),
    "no usage counters": _left_out(
        "local function count_usage(at, scope, model, calls, denials, tokens, spend)"),
    "no webhook read": _left_out("local function hooks()", "false"),
    "no report counters": _left_out("local function count(scope, counter, by)"),
    "no audit entry": _left_out("local function audit_fields(kind, fields)"),
    "no due lookup": _left_out("local function overdue(limit)", "{}"),
}
"""Parts of the store's library to price, each left out of a copy of it."""


@contextmanager
def counted_server() -> Iterator[tuple[str, int, Path]]:
    """redis-server under callgrind on a free port: its URL, its pid, the dump file prefix."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "cg.out"
        with shared.started_redis(
                before=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                options=("--hz", "1"), timeout_s=60) as (url, process):
            yield url, process.pid, out


class Counter:
    """Zero the server's counters, then read what ran since (callgrind_control)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = str(pid), out

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", self.pid], check=True, capture_output=True)

    def read(self) -> int:
        before = set(self.out.parent.glob(self.out.name + ".*"))
        subprocess.run(["callgrind_control", "-d", self.pid], check=True, capture_output=True)
        for _ in range(300):
            new = set(self.out.parent.glob(self.out.name + ".*")) - before
            if new:
                time.sleep(0.2)  # let the dump finish
                found = re.search(r"^summary: (\d+)", new.pop().read_text(), re.M)
                if found:
                    return int(found.group(1))
            time.sleep(0.1)
        raise SystemExit("callgrind wrote no dump")


def measure(depths: list[int], calls: int, scripts: list[str], keyed: bool = False) -> None:
    with counted_server() as (url, pid, out):
        counter = Counter(pid, out)
        client = redis.Redis.from_url(url, decode_responses=True)
        client.function_load(FLOOR_LUA.read_text(), replace=True)
        text, prefix = library()
        names = {"store": prefix}
        for name in scripts:
            if name in VARIANTS:
                body = VARIANTS[name](text)
                own = "allotment_v" + hashlib.sha1(body.encode()).hexdigest()[:11]
                client.function_load(body.replace(prefix, own), replace=True)
                names[name] = own
        print(f"server instructions per call (k), {calls} calls each"
              f"{', each with an idempotency key' if keyed else ''}; Δ = store − this")
        fresh = iter(range(1 << 62))  # each call's own key, never one seen before
        for depth in depths:
            store = RedisStore(url=url)
            guard = al.Guard(store, ttl_ms=shared.TTL_MS)
            subject = shared.subject_of(f"instr-d{depth}", depth)
            shared.set_budgets(guard, subject)
            for _ in range(20):  # warm: the tenant's keys and the library's caches
                guard.reserve(subject, shared.ACTION, shared.ESTIMATE).commit(shared.ACTUAL)
            found: dict[str, dict[str, float]] = {}
            for name in scripts:
                found[name] = {}
                for op in ("reserve", "commit"):
                    if op == "reserve":
                        ops = [guard._reserve_op(subject, shared.ACTION, shared.ESTIMATE,
                                                 idempotency_key=_key(keyed, fresh))
                               for _ in range(calls)]
                    else:
                        held = [guard.reserve(subject, shared.ACTION, shared.ESTIMATE)
                                for _ in range(calls)]
                        ops = [commit_op(r.id, shared.ACTUAL,
                                         idempotency_key=_key(keyed, fresh)) for r in held]
                    made = [store._flows.call(o) for o in ops]
                    counter.zero()
                    replies = [client.fcall(f"floor_{op}" if name == "floor" else
                                            c.function.replace(prefix, names[name]),
                                            len(c.keys), *c.keys, *c.args) for c in made]
                    total = counter.read()
                    if not all(isinstance(r, list) and (op == "commit" or r[0] == "ALLOW")
                               for r in replies):
                        raise SystemExit(f"{name} {op}: a call failed: {replies[0]!r}")
                    if op == "reserve":  # leave nothing held
                        for r in replies:
                            store.execute(commit_op(r[1], shared.ACTUAL))
                    found[name][op] = total / calls / 1000
            base = found.get("store")
            for name in scripts:
                line = f"depth {depth}  {name:<24}"
                for op in ("reserve", "commit"):
                    line += f"{op} {found[name][op]:7.1f}"
                    if base is not None and name != "store":
                        line += f" (Δ {base[op] - found[name][op]:+6.1f})"
                    line += "   "
                print(line.rstrip(), flush=True)
            if base is not None and "floor" in found:
                print(f"depth {depth}  store ÷ floor: reserve "
                      f"{base['reserve'] / found['floor']['reserve']:.2f}, commit "
                      f"{base['commit'] / found['floor']['commit']:.2f}")
            guard.close()
        client.close()


def _key(keyed: bool, fresh: Iterator[int]) -> str | None:
    return f"k-{next(fresh)}" if keyed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="3", help="scope depths, e.g. 1,3,6 (default 3)")
    parser.add_argument("--calls", type=int, default=200, help="calls per script and op")
    parser.add_argument("--only", default="", help="scripts, comma-separated (default all)")
    parser.add_argument("--keyed", action="store_true",
                        help="each reserve and commit with an idempotency key of its own")
    args = parser.parse_args()
    scripts = (args.only.split(",") if args.only
               else ["store", "floor", *VARIANTS])
    measure([int(d) for d in args.depths.split(",")], args.calls, scripts, args.keyed)


if __name__ == "__main__":
    main()
