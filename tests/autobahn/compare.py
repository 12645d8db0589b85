"""Compares an Autobahn|Testsuite report with tests/autobahn/expected.json.

    python compare.py REPORT_INDEX_JSON EXPECTED_JSON [--update]

Each case's `behavior` and `behaviorClose` must be what expected.json says;
a case missing on either side is a difference too. Prints the counts per
outcome and, on a difference, one line per case, then exits 1. With
--update, writes expected.json from the report instead (then review the
diff: every case not OK needs its line in tests/autobahn/README.md).

Runs on the suite's own Python 2.7 (and on Python 3).
"""
from __future__ import print_function

import collections
import io
import json
import sys


def case_key(case):
    return tuple(int(p) for p in case.split("."))


def main(argv):
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--update"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with io.open(argv[1], encoding="utf-8") as f:
        index = json.load(f)
    if len(index) != 1:
        print("expected one agent in %s, found %s" % (argv[1], sorted(index)), file=sys.stderr)
        return 1
    report = list(index.values())[0]
    got = dict(
        (case, {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]})
        for case, r in report.items()
    )

    counts = collections.Counter(r["behavior"] for r in got.values())
    print(
        "autobahn: %d cases: %s"
        % (len(got), ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    )
    slowest = sorted(report.items(), key=lambda kv: -kv[1].get("duration", 0))[:3]
    print("autobahn: slowest: %s" % ", ".join("%s %d ms" % (c, r["duration"]) for c, r in slowest))

    if len(argv) == 4:
        lines = ",\n".join(
            '  "%s": {"behavior": "%s", "behaviorClose": "%s"}'
            % (c, got[c]["behavior"], got[c]["behaviorClose"])
            for c in sorted(got, key=case_key)
        )
        with io.open(argv[2], "w", encoding="utf-8") as f:
            f.write(u"{\n" + lines + u"\n}\n")
        print("autobahn: wrote %s" % argv[2])
        return 0

    with io.open(argv[2], encoding="utf-8") as f:
        want = json.load(f)
    diffs = []
    for case in sorted(set(got) | set(want), key=case_key):
        g, w = got.get(case), want.get(case)
        if g is None:
            diffs.append("%-8s expected %s/%s, not run" % (case, w["behavior"], w["behaviorClose"]))
        elif w is None:
            diffs.append("%-8s got %s/%s, not in expected.json" % (case, g["behavior"], g["behaviorClose"]))
        elif g != w:
            diffs.append(
                "%-8s expected %s/%s, got %s/%s   (target/autobahn/reports/%s)"
                % (case, w["behavior"], w["behaviorClose"], g["behavior"], g["behaviorClose"],
                   report[case].get("reportfile", "").replace(".json", ".html"))
            )
    if diffs:
        print("autobahn: %d case(s) differ from %s (behavior/behaviorClose):" % (len(diffs), argv[2]))
        for d in diffs:
            print("  " + d)
        return 1
    print("autobahn: every case as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
