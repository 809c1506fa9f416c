#!/usr/bin/env bash
# CPU per order of an embedded `mercato up`, counted during the load only (utime+stime from
# /proc/<pid>/stat after the shop is ready and again after `mercato load` ends, drain
# included), so startup (seeding, the shoppers' sign-ins) is left out; the process's memory at
# the end of the load; then `mercato audit`.
# With a fifth argument `perf`, also samples the process for 8 s from the 8th second
# (perf record --call-graph dwarf) into /tmp/TAG.perf. Refuses to start while any of the
# ports 8080-8087 is taken, and stops its `mercato up` by pid.
#
#   bench/cpu.sh BIN TAG RATE SECONDS [perf]    (data in /tmp/d-TAG)

bin=$1; tag=$2; rate=$3; secs=$4; prof=$5
dir=/tmp/d-$tag
rm -rf $dir
if ss -ltn | grep -q ':808[0-7] '; then echo "ports busy"; exit 1; fi
MERCATO_RATE_LIMIT_IP_PER_SEC=0 MERCATO_RATE_LIMIT_USER_PER_SEC=0 $bin up --data-dir $dir > $dir.up.log 2>&1 &
pid=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8080/health/ready >/dev/null && curl -sf http://127.0.0.1:8083/health/ready >/dev/null && break; sleep 0.5; done
$bin load --data-dir $dir --rate $rate --duration ${secs}s --connections 64 --json $dir.load.json > $dir.load.out 2>&1 &
lpid=$!
# The shop's CPU is counted from the first order on: registering the shoppers (argon2) is not
# an order's cost.
for i in $(seq 1 600); do grep -q "the load starts now" $dir.load.out 2>/dev/null && break; sleep 0.05; done
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
if [ -n "$prof" ]; then sleep 8; perf record -F 199 --call-graph dwarf,16384 -p $pid -o /tmp/$tag.perf -- sleep 8 > /tmp/$tag.perf.log 2>&1; fi
wait $lpid
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
echo "$tag memory after the load: $(grep -E 'VmHWM|VmRSS|RssAnon|RssFile' /proc/$pid/status | tr -s ' \t\n' ' ')"
grep -E "orders (accepted|paid|final)|backlog|accept " $dir.load.out
acc=$(grep "orders accepted" $dir.load.out | awk '{print $3}')
echo "$tag CPU during load: $(( (t1-t0)*10 )) ms for $acc orders: $(awk "BEGIN{printf \"%.3f\", ($t1-$t0)*10/$acc}") ms/order; load avg $(cut -d' ' -f1-3 /proc/loadavg)"
$bin audit --data-dir $dir > $dir.audit 2>&1; echo "audit rc=$? $(tail -1 $dir.audit)"
kill $pid; wait $pid 2>/dev/null
