"""The long fuzz run behind `make fuzz`: seeded mutations of real sync traffic, at the frame
decoder and at a session after a genuine handshake. Not collected by pytest (no test_ prefix).

How we fuzz (the same machinery as tests/test_fuzz_session.py, in tests/session_fuzz.py):
- Corpus: the frames a real peer sent in recorded exchanges between small real replicas --
  DELTAs, ACKs, PINGs and PONGs, a whole state transfer, carrying conversations and message
  histories (versions, a branch, streamed appends, an edit, a delete, a switch) -- without
  authentication, with a pre-shared key, and with a key plus an authorization scope.
- Each input is made by a random.Random seeded from (--seed, target, input number): 1-5
  mutations of a scenario's frames (bit flips, byte edits, truncation, lying and huge length
  prefixes, garbage and deeply nested msgpack bodies, fields of the wrong type or arity, edge
  and out-of-range sequence numbers, DELTA/STATE_CHUNK payloads with invalid or hostile CRDT
  content (session_fuzz.crafted_histories among them: forged cycles, reshaped headers,
  choices naming nothing, pending appends, stamps from the future), frames spliced from other exchanges, replayed, dropped or reordered, random
  well-formed messages), then split at random offsets between receive_data calls.
- decoder: FrameDecoder yields messages or RemoteProtocolError; chunked equals whole; every
  message re-encodes canonically. session: a fresh copy of replica A is handshaken with a
  genuine session on its peer, then fed the input; events are valid, or the session refuses
  with RemoteProtocolError, an ERROR frame queued, CLOSED and deaf from then on; the refused
  frame changed nothing (frame by frame on a twin) and the replica equals a twin fed only the
  accepted prefix. handshake (keyed scenarios): mutations of the peer's recorded HELLO and
  AUTH (and what followed) fed to a fresh session never authenticate it, since they were not
  made for its nonce; it refuses cleanly or waits, and the replica is untouched.
- A crash is any other exception, a broken property, or an input running over --timeout
  seconds (a hang). Each is saved to --crash-dir as JSON (target, seed, index, input as hex,
  cuts, traceback) and replayed with --replay FILE; known, reported bugs
  (session_fuzz.KNOWN_BUGS) are counted apart.

    python tests/fuzz_frames.py --inputs 1000000 --seed 1 --jobs 2
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import session_fuzz as fz  # noqa: E402

TARGETS = ("decoder", "session", "handshake")


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("input ran over the time limit")


def make_input(mutators: dict[str, list[fz.Mutator]], seed: int, target: str, index: int
               ) -> tuple[fz.Mutator, bytes, list[int]]:
    rng = random.Random(f"{seed}:{target}:{index}")
    mutator = rng.choice(mutators[target])
    if rng.random() < 0.05:  # plain random bytes, sometimes behind a valid prefix
        prefix = b"".join(mutator.frames[: rng.randrange(len(mutator.frames) + 1)])
        data = prefix + rng.randbytes(rng.randrange(1, 200))
    else:
        data = mutator.stream(rng)
    return mutator, data, fz.random_cuts(rng, data)


def run_one(lab: fz.Lab, mutator: fz.Mutator, target: str, data: bytes, cuts: list[int]
            ) -> str:
    """One input through one target; returns how it ended ('accepted' or the refusal)."""
    if target == "decoder":
        _, reason = fz.check_decoder_input(data, cuts)
    elif target == "handshake":
        reason = fz.check_handshake_input(lab, mutator.sc, data, cuts)
    else:
        reason = fz.check_session_input(lab, mutator.sc, data, cuts).reason
    return "accepted" if reason is None else "refused"


def mutators_of(lab: fz.Lab) -> dict[str, list[fz.Mutator]]:
    """Per target: the decoder sees everything, the session the traffic after the handshake,
    the handshake target P's side of a keyed handshake and what follows it."""
    after = [fz.Mutator(sc, lab.scenarios) for sc in lab.scenarios]
    keyed = [fz.Mutator(sc, lab.scenarios, handshake=True) for sc in lab.scenarios
             if fz.SECURITY[sc.security] is not None]
    return {"decoder": after + keyed, "session": after, "handshake": keyed}


def worker(job: int, jobs: int, seed: int, counts: dict[str, int], crash_dir: str,
           timeout: float) -> dict[str, Any]:
    lab = fz.Lab()
    mutators = mutators_of(lab)
    signal.signal(signal.SIGALRM, _alarm)
    stats: dict[str, Any] = {t: collections.Counter() for t in TARGETS}
    signatures: dict[str, collections.Counter] = {t: collections.Counter() for t in TARGETS}
    seconds = {t: 0.0 for t in TARGETS}
    try:
        for target in TARGETS:
            start = time.perf_counter()
            for index in range(job, counts[target], jobs):
                mutator, data, cuts = make_input(mutators, seed, target, index)
                signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    outcome = run_one(lab, mutator, target, data, cuts)
                except BaseException as e:  # noqa: BLE001 - every escape is a finding
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    known = fz.known_bug(e)
                    outcome = "known bug" if known else "crash"
                    signature = known or f"{type(e).__name__}: {str(e)[:120]}"
                    signatures[target][signature] += 1
                    if not known or signatures[target][signature] <= 3:
                        _save(crash_dir, target, seed, index, mutator, data, cuts, e, known)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                stats[target][outcome] += 1
                done = sum(stats[target].values())
                if job == 0 and done % 20_000 == 0:
                    print(f"  {target}: {done * jobs} of {counts[target]} "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
            seconds[target] = time.perf_counter() - start
    finally:
        lab.close()
    return {"stats": stats, "signatures": signatures, "seconds": seconds}


def _save(crash_dir: str, target: str, seed: int, index: int, mutator: fz.Mutator,
          data: bytes, cuts: list[int], e: BaseException, known: str | None) -> None:
    os.makedirs(crash_dir, exist_ok=True)
    name = f"{'known-' if known else ''}{target}-seed{seed}-{index}.json"
    record = {"target": target, "seed": seed, "index": index, "scenario": mutator.sc.name,
              "input": data.hex(), "cuts": cuts, "known_bug": known,
              "error": "".join(traceback.format_exception(e))}
    Path(crash_dir, name).write_text(json.dumps(record, indent=1))


def replay(path: str) -> int:
    record = json.loads(Path(path).read_text())
    lab = fz.Lab()
    try:
        (mutator,) = [m for m in mutators_of(lab)[record["target"]]
                      if m.sc.name == record["scenario"]]
        data = bytes.fromhex(record["input"])
        print(f"replaying {record['target']} input {record['index']} (seed {record['seed']}, "
              f"scenario {record['scenario']}, {len(data)} bytes)")
        print(run_one(lab, mutator, record["target"], data, record["cuts"]))
        print("no crash")
        return 0
    finally:
        lab.close()


def run_atheris(runs: int, crash_dir: str, corpus_dir: str) -> int:
    """Coverage-guided fuzzing with atheris (libFuzzer) after the seeded run, if installed.

    An input's first byte picks the target and scenario, its second how the rest is split
    between receive_data calls (0: not at all, n: every n bytes); the corpus starts from the
    recorded exchanges. Known bugs are skipped; anything else stops the run, with the input
    saved by libFuzzer in `crash_dir`. Does not return (libFuzzer exits the process).
    """
    if runs <= 0:
        return 0
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install -e '.[fuzz]'): no coverage-guided run")
        return 0
    lab = fz.Lab()
    mutators = mutators_of(lab)
    cases = [(t, m) for t in TARGETS for m in mutators[t]]
    os.makedirs(crash_dir, exist_ok=True)
    os.makedirs(corpus_dir, exist_ok=True)
    for i, (target, m) in enumerate(cases):
        Path(corpus_dir, f"recorded-{i}-{target}-{m.sc.name}").write_bytes(
            bytes([i, 0]) + b"".join(m.frames))
    known: collections.Counter = collections.Counter()

    def test_one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        target, m = cases[data[0] % len(cases)]
        body, step = data[2:], data[1]
        cuts = list(range(step, len(body), step)) if step else []
        try:
            run_one(lab, m, target, body, cuts)
        except fz.FuzzFailure as e:
            if not fz.known_bug(e):
                raise
            bug = fz.known_bug(e)
            known[bug] += 1
            if known[bug] == 1:
                print(f"atheris: hit known bug {bug} (not counted as a crash)", flush=True)

    atheris.instrument_all()
    print(f"atheris: {runs} coverage-guided runs; crashes go to {crash_dir}/", flush=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-artifact_prefix={crash_dir}/",
                   "-max_len=4096", "-print_final_stats=1", corpus_dir], test_one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs in all (default 1M)")
    ap.add_argument("--session-share", type=float, default=0.10,
                    help="fraction of the inputs for the session target (slower, ~4 ms each)")
    ap.add_argument("--handshake-share", type=float, default=0.20,
                    help="fraction of the inputs for the handshake target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input is a hang")
    ap.add_argument("--crash-dir", default="build/fuzz-crashes")
    ap.add_argument("--replay", metavar="FILE", help="run one saved crash again and exit")
    ap.add_argument("--atheris", type=int, metavar="RUNS",
                    help="instead: RUNS coverage-guided runs with atheris, if installed")
    ap.add_argument("--corpus-dir", default="build/fuzz-corpus", help="atheris' corpus")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.atheris is not None:
        return run_atheris(args.atheris, args.crash_dir, args.corpus_dir)
    n_session = round(args.inputs * args.session_share)
    n_handshake = round(args.inputs * args.handshake_share)
    counts = {"decoder": args.inputs - n_session - n_handshake, "session": n_session,
              "handshake": n_handshake}
    print(f"fuzzing: {args.inputs} inputs ("
          + ", ".join(f"{t} {n}" for t, n in counts.items())
          + f"), seed {args.seed}, {args.jobs} jobs", flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        results = pool.starmap(worker, [(j, args.jobs, args.seed, counts, args.crash_dir,
                                         args.timeout) for j in range(args.jobs)])
    elapsed = time.perf_counter() - start
    crashes = 0
    for target in TARGETS:
        stats: collections.Counter = sum((r["stats"][target] for r in results),
                                         collections.Counter())
        sigs: collections.Counter = sum((r["signatures"][target] for r in results),
                                        collections.Counter())
        busy = max(r["seconds"][target] for r in results)
        n = sum(stats.values())
        crashes += stats["crash"]
        print(f"{target:8} {n:>9} inputs: {stats['accepted']} accepted, {stats['refused']} "
              f"refused, {stats['crash']} crashes, {stats['known bug']} known bugs; "
              f"{n / busy if busy else 0:,.0f} inputs/s")
        for sig, hits in sigs.most_common():
            print(f"    {hits:>7} x {sig}")
    total = sum(counts.values())
    print(f"total    {total:>9} inputs in {elapsed:.0f} s ({total / elapsed:,.0f} inputs/s), "
          f"{crashes} crashes" + (f", saved in {args.crash_dir}/" if crashes else ""))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
