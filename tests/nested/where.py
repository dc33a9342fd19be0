#!/usr/bin/env python3
"""Names kernel addresses: copies standard input to standard output, each
kernel text address (0xffffffff........ or a bare 16-digit ffffffff........)
followed by [function+offset] from SYMBOLS, a symbol list in `nm -n` or
/proc/kallsyms form.

Usage: where.py SYMBOLS <text
"""
import bisect
import re
import sys


def load(path):
    symbols = []
    with open(path) as lines:
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T", "w", "W"):
                symbols.append((int(parts[0], 16), parts[2]))
    symbols.sort()
    return symbols


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    symbols = load(sys.argv[1])
    starts = [start for start, _ in symbols]

    def name(match):
        address = int(match.group(1), 16)
        i = bisect.bisect_right(starts, address) - 1
        if i < 0:
            return match.group(0)
        start, function = symbols[i]
        return f"{match.group(0)} [{function}+{address - start:#x}]"

    for line in sys.stdin:
        sys.stdout.write(re.sub(r"(?:0x)?(ffffffff[0-9a-f]{8})\b", name, line))


if __name__ == "__main__":
    main()
