#!/usr/bin/env python3
"""Writes the structure-aware fuzz seeds with numbers at the edges (issue 19) and the libFuzzer dictionaries.

The seeds are real sessions (the corpus files made from a live VMM) with the numbers a hostile or broken peer
would put in them, one file per pattern: negative fields, ranges that wrap past 2^64, counts whose sums
overflow, timestamps near 2^64, non-integer numbers. Run from the repository root; the output is committed.
"""
import json, os, re

CORPUS = "Tests/FuzzTargetsTests/Corpus"
DICTS = "Tests/FuzzTargetsTests/Dictionaries"
MAX = 16384  # .ci/run's -max_len
U64 = 2**64 - 1

NUMBERS = ["0", "-0", "1", "-1", "4095", "4096", "4097", "2147483647", "2147483648", "4294967295", "4294967296",
           "9007199254740993", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
           "-9223372036854775809", "18446744073709547520", "18446744073709551615", "18446744073709551616",
           "1e11", "1e300", "-1e300", "1e-300", "1.5", "1E+2", "0.0"]

PATTERNS = {
    "negative": lambda k, v: -1 if k in {"shared-alias", "vcpus", "size", "ram-size", "index", "vcpu", "slot",
                                         "count", "seq", "generation", "limit", "faults", "value", "t"} else None,
    "wrapping": lambda k, v: (U64 - 4095) if k in {"gpa", "guest-memfd-offset", "userspace-addr"} else
                             (1 << 40) if k == "size" else None,
    "overflowing": lambda k, v: U64 if k in {"size", "dropped", "total", "count", "ram-size", "private-bytes",
                                             "shared-bytes", "seq", "value", "runs-changed"} else None,
    "time": lambda k, v: U64 if k in {"seconds", "microseconds", "time-ns", "duration-ns", "t",
                                      "started-at-ns", "started-monotonic-ns"} else None,
    "floats": lambda k, v: float(v) + 0.5 if isinstance(v, int) and k not in {"version", "protocol"} else None,
}

def rewrite(j, f, member=None):
    if isinstance(j, dict):
        if member in {"exit-counts", "stats"} and f is PATTERNS["overflowing"]:
            return {k: U64 for k in j}
        out = {}
        for k, v in j.items():
            r = f(k, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            out[k] = r if r is not None else rewrite(v, f, k)
        return out
    if isinstance(j, list):
        return [rewrite(x, f, member) for x in j]
    return j

def lines(path):
    with open(path) as fh:
        return [json.loads(l) for l in fh if l.strip()]

def dump(objs, path, keep_first=1):
    """The first `keep_first` lines, then as many of the rest as fit in MAX bytes, one of each shape first."""
    out, size, seen = [], 0, set()
    texts = [json.dumps(o, separators=(",", ":")) for o in objs]
    order = list(range(keep_first))
    shapes = {}
    for i, o in enumerate(objs[keep_first:], keep_first):
        shape = (tuple(sorted(o)) if isinstance(o, dict) else ()), str(o.get("event") or o.get("reply") or
                 (type(o.get("return")).__name__ + str(sorted(o["return"])[:1] if isinstance(o.get("return"), dict) else "")))
        if shape not in shapes:
            shapes[shape] = i
    order += sorted(shapes.values()) + [i for i in range(keep_first, len(objs)) if i not in shapes.values()]
    for i in order:
        if size + len(texts[i]) + 1 > MAX:
            continue
        out.append(i)
        size += len(texts[i]) + 1
    with open(path, "w") as fh:
        fh.write("".join(texts[i] + "\n" for i in sorted(out)))

def keys(j, acc):
    if isinstance(j, dict):
        for k, v in j.items():
            acc.add(k); keys(v, acc)
    elif isinstance(j, list):
        for x in j: keys(x, acc)
    elif isinstance(j, str) and re.fullmatch(r"[A-Za-z0-9_\-]{2,40}", j):
        acc.add(j)

def write_dict(name, words):
    with open(f"{DICTS}/{name}.dict", "w") as fh:
        fh.write(f"# libFuzzer dictionary for the {name} target: member names and values of the protocol as the\n"
                 "# corpus uses them, and numbers at the edges. Made by make-edge-seeds.py.\n")
        for w in sorted(words):
            fh.write(json.dumps(w) + "\n")
        for n in NUMBERS:
            fh.write(json.dumps(n) + "\n")

os.makedirs(DICTS, exist_ok=True)
client = lines(f"{CORPUS}/client/session-replies-and-events.jsonl")
recording = lines(f"{CORPUS}/recording/short-inflated.jsonl")
for name, f in PATTERNS.items():
    dump([client[0]] + [rewrite(o, f) for o in client[1:]], f"{CORPUS}/client/edge-{name}.jsonl", keep_first=2)
    dump([recording[0]] + [rewrite(o, f) for o in recording[1:]], f"{CORPUS}/recording/edge-{name}.jsonl", keep_first=2)

server = [json.loads(l) for l in open(f"{CORPUS}/server/session-every-command.txt") if l.strip()]
for name, f in PATTERNS.items():
    with open(f"{CORPUS}/server/edge-{name}.txt", "w") as fh:
        for o in server:
            o2 = dict(o)
            if "arguments" in o:
                o2["arguments"] = rewrite(o["arguments"], f)
            fh.write(json.dumps(o2, separators=(",", ":")) + "\n")
with open(f"{CORPUS}/server/edge-ids-and-half-lines.txt", "w") as fh:
    fh.write('{"execute":"qmp_capabilities","id":1e5}\n')
    for i in ["18446744073709551616", "-0.0", "1.50", '{"a":[1e1]}', '"x"', "null"]:
        fh.write('{"execute":"query-version","id":%s}\n' % i)
    fh.write('{"execute":"read-memory","arguments":{"gpa":4095,"size":8194,"view":"auto"}}\n')
    fh.write('{"execute":"query-vm"')  # the stream ends inside a message

# Every numeric argument of every command at the edges (issue 28: a read-only client's one number must not trap).
NUMERIC_ARGUMENTS = {"query-memory-attributes": ["gpa", "size"], "query-memory-faults": ["limit"],
                     "query-snapshot": ["faults"], "query-metrics": ["conversion-times-after"],
                     "read-memory": ["gpa", "size"], "set-memory-attributes": ["gpa", "size"],
                     "vcpu-control": ["index"], "inject-fault": ["vcpu", "gpa", "size"]}
FIXED = {"set-memory-attributes": ',"private":false', "vcpu-control": ',"action":"step"', "inject-fault": ',"kind":"flip"'}
with open(f"{CORPUS}/server/edge-every-numeric-argument.txt", "w") as fh:
    fh.write('{"execute":"qmp_capabilities"}\n')
    for command, members in NUMERIC_ARGUMENTS.items():
        for m in members:
            for v in ["18446744073709551615", "18446744073709551614", "-1", "1.5", "18446744073709551616"]:
                fh.write('{"execute":"%s","arguments":{"%s":%s%s}}\n' % (command, m, v, FIXED.get(command, "")))

ck, rk, sk = set(), set(), set()
for o in client: keys(o, ck)
for o in recording: keys(o, rk)
for o in server: keys(o, sk)
sk |= {"execute", "arguments", "id", "qmp_capabilities", "enable", "oob", "exec-oob", "view", "auto", "private",
       "shared", "action", "pause", "resume", "step", "kind", "nmi", "mce", "discard", "revoke", "flip", "policy",
       "convert", "report", "limit", "faults", "index", "vcpu", "gpa", "size"}
sk |= set(NUMERIC_ARGUMENTS) | {m for ms in NUMERIC_ARGUMENTS.values() for m in ms}
write_dict("client", ck)
write_dict("recording", rk | ck)
write_dict("server", sk)
tk = set()
for t in os.listdir(f"{CORPUS}/theme"):
    keys(json.load(open(f"{CORPUS}/theme/{t}")), tk)
write_dict("theme", tk | {"attrs", "fg", "bg", "fg256", "bg256", "bold", "reverse", "underline", "dim"})
