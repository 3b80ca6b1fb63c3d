"""Fault-injection harness: deterministic simulation (sim.py), real processes behind a
fault-injecting proxy (proxy.py, cluster.py), and the checker both share (checker.py).
Run with `make faults` or `python -m tests.faults`; the fault model and the checker's rules
are in specs/faults.md. Test and operations tooling: nothing in crdtim imports it."""
