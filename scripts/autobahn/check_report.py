"""Reads an Autobahn|Testsuite index.json; exits 1 unless every case passed cleanly.

A case passes when its behavior is OK, NON-STRICT or INFORMATIONAL and its closing
behavior is OK or INFORMATIONAL. Runs under Python 2.7 (the wstest virtualenv) and 3.
"""
from __future__ import print_function

import json
import sys

GOOD = ("OK", "NON-STRICT", "INFORMATIONAL")
CLEAN_CLOSE = ("OK", "INFORMATIONAL")


def main(path, sections):
    with open(path) as f:
        index = json.load(f)
    cases = {}
    for agent in index.values():
        cases.update(agent)
    if not cases:
        print("autobahn: the report holds no cases")
        return 1
    failed = sorted(
        (k for k, v in cases.items() if v["behavior"] not in GOOD),
        key=case_key,
    )
    unclean = sorted(
        (k for k, v in cases.items() if v["behaviorClose"] not in CLEAN_CLOSE),
        key=case_key,
    )
    counts = {}
    for v in cases.values():
        counts[v["behavior"]] = counts.get(v["behavior"], 0) + 1
    missing = [s for s in sections if not any(k.split(".")[0] == s for k in cases)]
    print(
        "autobahn: %d cases: %s; %d failed, %d unclean closes"
        % (
            len(cases),
            ", ".join("%s %d" % kv for kv in sorted(counts.items())),
            len(failed),
            len(unclean),
        )
    )
    for k in failed:
        print("  FAILED %s: behavior %s (close %s)" % (k, cases[k]["behavior"], cases[k]["behaviorClose"]))
    for k in unclean:
        print("  UNCLEAN CLOSE %s: %s, remote close code %s"
              % (k, cases[k]["behaviorClose"], cases[k].get("remoteCloseCode")))
    for s in missing:
        print("  MISSING: no case of section %s ran" % s)
    return 1 if failed or unclean or missing else 0


def case_key(case):
    return [int(p) for p in case.split(".")]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
