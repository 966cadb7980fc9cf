#!/bin/bash
cd /work/main
run() { name=$1; shift; HF_HUB_OFFLINE=1 .venv/bin/python bench/flood.py --no-baseline --no-progress --json /tmp/r/final/$name.json "$@" > /tmp/r/final/$name.log 2>&1; }
run single-storm --scenario single-storm
run two-storms --scenario two-storms
run two-storms-w2 --scenario two-storms --workers 2
run confusable-fx --scenario confusable-fx
run confusable-cards --scenario confusable-cards
run confusable-transfers --scenario confusable-transfers
run calm --scenario calm
run calm20k --scenario calm --tickets 20000 --fast
run overload --scenario overload --capacity 200
run two-storms-2 --scenario two-storms
echo done > /tmp/r/final/DONE
