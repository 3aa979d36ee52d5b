#!/usr/bin/env bash
# bench/alert_latency.sh - event -> webhook latency (issue 6: "p99 < 200 ms with a healthy
# receiver"): bench/alert_storm.sh --mode latency; every option and variable of that script
# applies (LAT_N=200 alerts, one every LAT_INTERVAL_MS=50 ms, tier LAT_TIER=P1 with group_wait 0,
# RUNS=3, PIN=split, LAT_LOAD=1 to run the proxy load meanwhile). See its header for the method.
exec "$(dirname "$0")/alert_storm.sh" --mode latency "$@"
