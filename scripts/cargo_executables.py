"""Reads cargo's JSON messages (`--message-format=json...`) on stdin and prints one line per
test or bench executable built: its target name (`lib` for the library's unit tests) and path."""
import json
import sys

for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        print("lib" if kind == "lib" else m["target"]["name"], m["executable"])
