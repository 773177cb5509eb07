# Lockstep writer for the atomicity tests: role "a" appends n to its log, prints n and
# waits for the echo; role "b" reads n, appends it to its log and echoes it. Chained
# a -> b -> a, the two logs differ by at most the record in flight at any instant, so a
# backup taken at one instant restores logs whose last records are equal or a = b + 1.
# usage: python3 lockstep-writer.py LOG a|b
import sys
path, role = sys.argv[1], sys.argv[2]
f = open(path, "a", buffering=1)
n = 0
while True:
    if role == "b":
        line = sys.stdin.readline()
        if not line:
            break
        n = int(line)
        f.write("%d\n" % n); f.flush()
        sys.stdout.write("%d\n" % n); sys.stdout.flush()
    else:
        n += 1
        f.write("%d\n" % n); f.flush()
        sys.stdout.write("%d\n" % n); sys.stdout.flush()
        if not sys.stdin.readline():
            break
