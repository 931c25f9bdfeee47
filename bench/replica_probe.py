#!/usr/bin/env python3
"""Small probes for bench/replicas.sh (stdlib only).

    replica_probe.py seq URL TOKEN            the canonical feed's current seq
    replica_probe.py wait URL SEQ [SHA256]    polls URL/status every 10 ms until seq_applied >= SEQ
                                              and (if given) `approved` is served with the InRelease
                                              of this digest; prints the time (unix seconds)
    replica_probe.py content URL CHANNEL OUT  what the channel publishes: its Release files, the
                                              indices InRelease lists and the .debs its Packages
                                              list (digest → size), as JSON
    replica_probe.py new BEFORE AFTER         bytes a follower must fetch to go from BEFORE to
                                              AFTER: "INDICES_ALL_FORMS INDICES_SMALLEST DEBS"
    replica_probe.py versions URL CHANNEL     packages at the bumped version 1.0-2 in the
                                              channel's binary indices
"""
import json
import re
import sys
import time
import urllib.error
import urllib.request


def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def seq(url, token):
    body = json.loads(get(f"{url}/api/v1/replica/manifest?after=0&wait=0", token))
    m = re.search(r'"seq"\s*:\s*(\d+)', body["signed"])
    print(m.group(1))


def serves(status, in_release):
    """Whether the status shows `approved` served with this InRelease (any when None)."""
    if in_release is None:
        return True
    suites = status.get("channels", {}).get("approved", {}).get("in_release_sha256", {})
    return in_release in suites.values()


def wait(url, want, in_release=None, timeout=600.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = json.loads(get(f"{url}/status"))
            if (status.get("seq_applied") or 0) >= want and serves(status, in_release):
                print(f"{time.time():.3f}")
                return
        except (urllib.error.URLError, ConnectionError, ValueError):
            pass
        time.sleep(0.01)
    sys.exit(f"{url} did not apply seq {want} within {timeout} s")


def sha256_section(release):
    """(digest, size, path) of the SHA256: section of a Release text."""
    out, inside = [], False
    for line in release.splitlines():
        if line.startswith("SHA256:"):
            inside = True
        elif inside and line.startswith(" "):
            digest, size, path = line.split()
            out.append((digest, int(size), path))
        else:
            inside = False
    return out


def content(url, channel, out):
    base = f"{url}/channels/{channel}/dists/stable"
    release = {}
    for name in ("InRelease", "Release", "Release.gpg"):
        body = get(f"{base}/{name}")
        release[name] = len(body)
    entries = sha256_section(get(f"{base}/Release").decode())
    indices = {d: [s, p] for d, s, p in entries}
    debs = {}
    for _, _, path in entries:
        if not path.endswith("/Packages"):
            continue
        text = get(f"{base}/{path}").decode()
        for para in text.split("\n\n"):
            d = re.search(r"^SHA256: (\S+)", para, re.M)
            s = re.search(r"^Size: (\d+)", para, re.M)
            if d and s:
                debs[d.group(1)] = int(s.group(1))
    json.dump({"release": release, "indices": indices, "debs": debs}, open(out, "w"))


def new(before, after):
    """Release files + new indices in every form, the same in their smallest form (of
    `Packages`, `.gz`, `.xz` only the smallest travels to a replica; the plain one is made
    from it), and new .debs."""
    b, a = json.load(open(before)), json.load(open(after))
    release = sum(a["release"].values())
    fresh = [(s, p) for d, (s, p) in a["indices"].items() if d not in b["indices"]]
    smallest = {}
    for s, p in fresh:
        stem = re.sub(r"\.(gz|xz|bz2|lzma|zst)$", "", p)
        smallest[stem] = min(s, smallest.get(stem, s))
    debs = sum(s for d, s in a["debs"].items() if d not in b["debs"])
    print(release + sum(s for s, _ in fresh), release + sum(smallest.values()), debs)


def versions(url, channel):
    base = f"{url}/channels/{channel}/dists/stable"
    n = 0
    for _, _, path in sha256_section(get(f"{base}/Release").decode()):
        if path.endswith("/Packages"):
            n += len(re.findall(r"^Version: 1\.0-2$", get(f"{base}/{path}").decode(), re.M))
    print(n)


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "seq":
    seq(*args)
elif cmd == "wait":
    wait(args[0], int(args[1]), *args[2:3])
elif cmd == "content":
    content(*args)
elif cmd == "new":
    new(*args)
elif cmd == "versions":
    versions(*args)
else:
    sys.exit(__doc__)
