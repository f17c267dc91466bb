#!/usr/bin/env python3
"""Turns bench/run's data.tsv into the Markdown table (medians over rounds; errors and origin
requests summed; RSS is the largest VmHWM seen) with Shellac's ratios to nginx and Varnish."""

import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys

path, rounds, duration = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(path), delimiter="\t"))
groups = {}
for r in rows:
    groups.setdefault((r["test"], int(r["conns"]), r["proxy"]), []).append(r)

tests = list(dict.fromkeys(r["test"] for r in rows))
conns = sorted({int(r["conns"]) for r in rows})
proxies = list(dict.fromkeys(r["proxy"] for r in rows))
order = ["nginx", "varnish", "shellac", "shellac-log", "shellac-rules", "shellac-tiered", "shellac-mc"]
proxies.sort(key=lambda p: order.index(p) if p in order else len(order))
names = {"hit1k": "1 KiB hit", "hittag": "1 KiB hit, 4 tags", "hit256k": "256 KiB hit",
         "dyn": "dynamic-page hit",
         "pass": "pass-through", "storm": "cold-miss storm"}


def med(rs, k):
    return statistics.median(float(r[k]) for r in rs)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


cpu = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
      f"({cpu}), Linux {platform.release()}; wrk, the origin and the proxy on the same box. "
      f"{rounds} round(s) of {duration} s per measurement, proxies in rotating order; "
      f"medians over rounds. {version(['nginx', '-v'])}; {version(['varnishd', '-V'])}; "
      f"{version(['memcached', '-V'])}.")
print()
print("| test | conns | proxy | req/s | MB/s | p50 ms | p99 ms | errors | origin req/run | "
      "origin req/object | peak RSS MiB | req/s ÷ nginx | req/s ÷ Varnish | p99 ÷ nginx |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t in tests:
    for c in conns:
        base = {}
        for p in proxies:
            rs = groups.get((t, c, p))
            if rs:
                base[p] = (med(rs, "rps"), med(rs, "p99_ms"))
        for p in proxies:
            rs = groups.get((t, c, p))
            if not rs:
                continue
            rps, p99 = base[p]
            errors = sum(int(r["socket_errors"]) + int(r["non2xx"]) for r in rs)
            origin = sum(int(r["origin_requests"]) for r in rs) / len(rs)
            per_obj = "–"
            if t == "storm":
                objs = sum(int(r["storm_urls"]) for r in rs)
                refetched = sum(int(r["storm_refetched"]) for r in rs)
                per_obj = (f"{sum(int(r['storm_requests']) for r in rs) / objs:.2f} "
                           f"({refetched}/{objs} >1)") if objs else "?"
            rss = max(int(r["rss_kib"]) for r in rs) / 1024
            ratios = ["–", "–", "–"]
            if p.startswith("shellac"):
                if "nginx" in base and base["nginx"][0]:
                    ratios[0] = f"{rps / base['nginx'][0]:.2f}"
                    ratios[2] = f"{p99 / base['nginx'][1]:.2f}" if base["nginx"][1] else "?"
                if "varnish" in base and base["varnish"][0]:
                    ratios[1] = f"{rps / base['varnish'][0]:.2f}"
            print(f"| {names.get(t, t)} | {c} | {p} | {rps:,.0f} | {med(rs, 'mbps'):,.1f} | "
                  f"{med(rs, 'p50_ms'):.2f} | {p99:.2f} | {errors} | {origin:,.0f} | {per_obj} | "
                  f"{rss:.0f} | {' | '.join(ratios)} |")
print()
print("Proxies: `shellac` memory tier (256 MiB); `shellac-log` the same with the access log "
      "on as conf/shellac.yaml ships it (stderr, sent to a file); `shellac-rules` the same with conf/rules.yaml's "
      "12 recipes loaded; `shellac-tiered` memory + memcached; "
      "`shellac-mc` memcached only (`memory: {size: 0}`); nginx `proxy_cache` 256 MiB on tmpfs "
      "with `proxy_cache_lock on`; Varnish `-s malloc,256m`. Errors: wrk socket errors + non-2xx. "
      "Peak RSS: VmHWM of the proxy's processes, highest over the rounds so far (memcached's "
      "own memory not counted). Origin req/object: origin requests per new storm URL, and in brackets how many of the "
      "new URLs were fetched more than once (the object in flight when wrk stops is abandoned "
      "by all its clients at once; a proxy that fetches it once per abandoned client shows "
      "1/N there).")
