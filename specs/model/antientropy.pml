/*
 * The anti-entropy core of specs/protocol.md (protocol version 5), in Promela, for spin: the
 * core that versions 3 to 5 share; what 4 and 5 added (§11-§13, §15) is not modelled.
 *
 * What is modelled, and where the spec says it (specs/protocol.md §14 maps it line by line):
 *   - the delta log of each replica: entries 1..head, each with its origin and the part of
 *     a delta that was new to the replica ("removing redundant state", §0, §4);
 *   - DELTA(start, end, payload) intervals, one log entry per DELTA, leaving out entries
 *     whose origin is the receiver (back-propagation avoidance, §2, §4);
 *   - ACK(seq): the first on a connection is the resume point, later ones acknowledge one
 *     DELTA or STATE_END each (§2, §4); received_from persisted with the data it covers,
 *     peer_ack kept in memory and written at the next trim (§4);
 *   - log trimming: entries acked by every known peer, and a retention bound (§4);
 *   - state transfer: STATE_CHUNK / CHUNK_ACK / STATE_END, when the peer's resume point is
 *     below the floor or the floor passed what was sent (§3, §5);
 *   - the window of unacknowledged frames (§8);
 *   - forwarding through a third replica: an entry received from a peer is logged with that
 *     peer as origin and sent on to the others, not back to it (§4 "Not sent back"); a relay
 *     trims against the acks of all its peers (§4 "Trimming");
 *   - faults: a connection breaks at any instant (the frames in flight are lost), a replica
 *     crashes and restarts with its persisted state (state, log, floor, received_from, the
 *     acks written at the last trim) and loses the rest (sessions, acks noted since).
 * A CRDT state is a set of writes (a bit mask; join = union): the lattice laws are tested in
 * tests/test_laws.py, so the model needs only a join that is idempotent, commutative and
 * associative.
 *
 * Not modelled: the handshake's authentication and scopes, heartbeats and timeouts (a dead
 * link is a broken connection here), frame and byte budgets, group commit, held (`pending`)
 * values, duplicate connections, a sender that lost committed transactions (nosync), session
 * tables (§11), HAVE and the relay's rules that narrow forwarding (§12), reconciliation (§13).
 *
 * Compile-time switches:
 *   N, W, RET, WIN, DROPS, CRASHES  the scope (defaults below)
 *   WR                     how many replicas write (replicas 0..WR-1, W writes each; default N)
 *   LINE                   replica N-1, the relay, is the only peer of every other replica
 *                          (at N = 3 a line 0 - 2 - 1: replica 1 learns replica 0's writes
 *                          only through 2, and the other way); default: every pair are peers
 *   BUG_ACK_BEFORE_APPLY   the receiver sends ACK(end) before it applies the DELTA (two steps)
 *   BUG_TRIM_PAST_ACK      the sender streams past a trim: no floor check when it reads the
 *                          entries after what it sent (entries trimmed past the peer's ack are
 *                          skipped as if empty), and a resume point below the floor resumes
 *                          DELTAs instead of a state transfer
 *   BUG_BACK_PROPAGATE     DELTAs to a peer include the entries whose origin is that peer
 *   BUG_RESUME_FORGETS     the resume point (received_from) is not persisted with the data
 *                          it covers: a crash loses it, and the restarted replica resumes
 *                          from 0 while its peers hold acks above that
 * Seeded bugs only three replicas can show (one peer is every peer at two):
 *   BUG_ORIGIN_IS_WRITER   the receiver logs a DELTA's entries with the replica that wrote
 *                          them as origin, not the peer that sent them: a relay's peer then
 *                          sends the relay back what the relay sent it
 *   BUG_TRIM_ONE_PEER      the trim drops the entries acked by any one known peer, not by
 *                          every one: a peer that has not acked them yet then needs a state
 *                          transfer although retention never dropped them
 */

#ifndef N
#define N 3          /* replicas */
#endif
#ifndef W
#define W 1          /* local writes per replica */
#endif
#ifndef RET
#define RET 2        /* log_retention: entries more than RET behind the head are trimmed */
#endif
#ifndef WIN
#define WIN 2        /* max_unacked_frames */
#endif
#ifndef DROPS
#define DROPS 1      /* connection breaks per run */
#endif
#ifndef CRASHES
#define CRASHES 1    /* replica crashes per run */
#endif
#ifndef WR
#define WR N         /* replicas that write */
#endif
#ifdef LINE
#define ADJ(a, b) ((a) != (b) && ((a) == N-1 || (b) == N-1))
#else
#define ADJ(a, b) ((a) != (b))
#endif

#define NW   (WR*W)             /* writes in all */
#define L    (NW+1)             /* log slots per replica: each write is logged once, from 1 */
#define ALL  ((1 << NW) - 1)
#define CAP  (2*WIN + 2)        /* frames one direction of a link can hold (see send_frame) */
#define IX(a, b) ((a)*N + (b))

mtype = { DELTA, ACK, CHUNK, SEND, CHUNK_ACK };   /* SEND = STATE_END */
#define STATE_END SEND

/* out_st: what a replica sends a peer (specs/protocol.md §3) */
#define DOWN 0
#define WAIT_RESUME 1
#define DELTAS 2
#define XFER 3
/* in_st: what it receives */
#define IN_DELTAS 0
#define IN_STATE 1

/* one byte stream per ordered pair (from, to): FIFO, reliable while the connection lasts */
chan link[N*N] = [CAP] of { mtype, byte, byte, byte };

/* ---- durable (persisted) state of each replica ---- */
byte state[N];               /* the CRDT state: the set of writes it holds */
byte head[N];
byte floor[N];
byte logo[N*L];              /* log entry i of replica r: origin, at IX-like r*L+i */
byte logm[N*L];              /*                       and its mask (the novel part) */
byte rf[N*N];                /* rf[IX(r,p)] = received_from(p) at r */
byte packd[N*N];             /* peer acks written at the last trim */
byte nwrites[N];

/* ---- in memory: lost by a crash ---- */
byte pack[N*N];              /* pack[IX(r,p)] = peer_ack(p) at r */
bool up[N*N];                /* the connection between r and p (symmetric) */
byte out_st[N*N];
byte last_sent[N*N];
byte last_acked[N*N];
byte inflight[N*N];          /* DELTAs and STATE_END not yet acked */
byte chunks_out[N*N];        /* STATE_CHUNKs not yet CHUNK_ACKed */
byte xfer_head[N*N];
byte xfer_phase[N*N];        /* 1: chunk to send, 2: STATE_END to send */
byte in_st[N*N];
byte expect[N*N];
#ifdef BUG_ACK_BEFORE_APPLY
bool held[N*N];              /* an acked DELTA not yet applied */
byte held_mask[N*N];
byte held_end[N*N];
#endif

/* ---- ghost: for the properties only, never read by the protocol ---- */
byte wseq[N*NW];             /* wseq[r*NW+w]: the entry of r's log that holds write w (0: none) */
byte wfrom[N*NW];            /* wfrom[r*NW+w]: the replica whose frame brought w to r first */
byte ackfloor[N];            /* the highest floor r's trims set from acks (not retention) */
byte drops = 0;
byte crashes = 0;
bool trimmable[N];           /* scheduling: an ack or the head moved since r's last trim */

/* Scratch of one atomic step: every step writes each of these before it reads it, so no value
   is carried from one step to the next, and `hidden` keeps them out of the state vector (as
   process locals they would keep their last values and multiply the states ~8x). */
hidden byte p, k, f, a, b, m, c, novel;
hidden mtype kind;

#define HAS(m, w) (((m) >> (w)) & 1)

/* Every write in r's log entries 1..a is in p's state: what ACK(a) from p claims (§4). */
inline check_ack_covers(cr, cp, ca) {
  for (k : 0 .. NW-1) {
    if
    :: wseq[cr*NW+k] > 0 && wseq[cr*NW+k] <= ca -> assert(HAS(state[cp], k))
    :: else
    fi
  }
}

/* Log the part of `m` that is new to r, with origin o; join it (§4 step 2, §5). */
inline apply_logged(ar, ao, am) {
  novel = am & ~state[ar];
  if
  :: novel != 0 ->
     head[ar]++;
     trimmable[ar] = true;
     assert(head[ar] < L);
     logo[ar*L + head[ar]] = ao;
     logm[ar*L + head[ar]] = novel;
     for (k : 0 .. NW-1) {
       if
       :: HAS(novel, k) -> wseq[ar*NW+k] = head[ar]; wfrom[ar*NW+k] = ao
       :: else
       fi
     }
#ifdef BUG_ORIGIN_IS_WRITER
     /* (one write per entry in the scopes this bug is checked at: W = 1) */
     for (k : 0 .. NW-1) {
       if
       :: HAS(novel, k) -> logo[ar*L + head[ar]] = k / W
       :: else
       fi
     }
#endif
  :: else
  fi;
  state[ar] = state[ar] | am
}

inline send_frame(fc, fkind, fa, fb, fm) {
  /* A link never fills: each side has at most WIN data frames and the replies to the
     other side's WIN frames plus its resume ACK in flight. */
  assert(nfull(link[fc]) );
  link[fc] ! fkind, fa, fb, fm
}

inline reset_session(sr_, sp_) {
  out_st[IX(sr_,sp_)] = DOWN; in_st[IX(sr_,sp_)] = IN_DELTAS;
  inflight[IX(sr_,sp_)] = 0; chunks_out[IX(sr_,sp_)] = 0; xfer_phase[IX(sr_,sp_)] = 0;
  last_sent[IX(sr_,sp_)] = 0; last_acked[IX(sr_,sp_)] = 0; xfer_head[IX(sr_,sp_)] = 0; expect[IX(sr_,sp_)] = 0;
#ifdef BUG_ACK_BEFORE_APPLY
  held[IX(sr_,sp_)] = false; held_mask[IX(sr_,sp_)] = 0; held_end[IX(sr_,sp_)] = 0;
#endif
}

/* The connection between a and b breaks: what is in flight is lost, both sessions end. */
inline disconnect(da, db) {
  up[IX(da,db)] = false; up[IX(db,da)] = false;
  do
  :: link[IX(da,db)] ? _, _, _, _
  :: empty(link[IX(da,db)]) -> break
  od;
  do
  :: link[IX(db,da)] ? _, _, _, _
  :: empty(link[IX(db,da)]) -> break
  od;
  reset_session(da, db);
  reset_session(db, da)
}

/* Both sides open (§3, §4): each answers with its resume point ACK(received_from(peer)). */
inline connect(ca, cb) {
  up[IX(ca,cb)] = true; up[IX(cb,ca)] = true;
  out_st[IX(ca,cb)] = WAIT_RESUME; out_st[IX(cb,ca)] = WAIT_RESUME;
  expect[IX(ca,cb)] = rf[IX(ca,cb)]; expect[IX(cb,ca)] = rf[IX(cb,ca)];
  send_frame(IX(ca,cb), ACK, rf[IX(ca,cb)], 0, 0);
  send_frame(IX(cb,ca), ACK, rf[IX(cb,ca)], 0, 0)
}

/* Trim (§4): drop entries acked by every known peer, and entries more than RET behind the
   head; write the acks noted since the last trim. */
inline trim(tr) {
#ifdef BUG_TRIM_ONE_PEER
  f = 0;
  for (k : 0 .. N-1) {
    if
    :: ADJ(tr,k) && pack[IX(tr,k)] > f -> f = pack[IX(tr,k)]
    :: else
    fi
  }
#else
  f = head[tr];
  for (k : 0 .. N-1) {
    if
    :: ADJ(tr,k) && pack[IX(tr,k)] < f -> f = pack[IX(tr,k)]
    :: else
    fi
  }
#endif
  if
  :: f > ackfloor[tr] -> ackfloor[tr] = f
  :: else
  fi;
  if
  :: head[tr] > RET && head[tr] - RET > f -> f = head[tr] - RET
  :: else
  fi;
  if
  :: f > floor[tr] -> floor[tr] = f
  :: else
  fi;
  for (k : 0 .. N-1) { packd[IX(tr,k)] = pack[IX(tr,k)] }
}

/* Crash and restart of r: what was persisted stays, the rest is gone (§4 "Resume"). */
inline crash(kr) {
  for (k : 0 .. N-1) {
    if
    :: k != kr && up[IX(kr,k)] -> disconnect(kr, k)
    :: else
    fi;
    pack[IX(kr,k)] = packd[IX(kr,k)]
  }
#ifdef BUG_RESUME_FORGETS
  for (k : 0 .. N-1) { rf[IX(kr,k)] = 0 }
#endif
}

/* One frame from p to r. */
inline receive_one(rr, rp) {
  link[IX(rp,rr)] ? kind, a, b, m;
  c = IX(rr,rp);
  if
  :: kind == DELTA ->
     /* §3: inbound must be DELTAS and start the expected one (an honest peer never fails) */
     assert(in_st[c] == IN_DELTAS && a == expect[c]);
     /* back-propagation avoided (§4): nothing from an entry of rp's log whose origin is rr */
     for (k : 0 .. NW-1) {
       if
       :: HAS(m, k) -> assert(logo[rp*L + wseq[rp*NW+k]] != rr);
                       /* and not through a relay's log either: rp did not get it from rr */
                       assert(wfrom[rp*NW+k] != rr)
       :: else
       fi
     }
#ifdef BUG_ACK_BEFORE_APPLY
     expect[c] = b;
     held[c] = true; held_mask[c] = m; held_end[c] = b;
     send_frame(IX(rr,rp), ACK, b, 0, 0)
#else
     /* §4 step 2-3: one transaction (apply, log the novel part, received_from = end if
        larger), and only after the commit ACK(end) */
     apply_logged(rr, rp, m);
     if
     :: b > rf[c] -> rf[c] = b
     :: else
     fi;
     expect[c] = b;
     send_frame(IX(rr,rp), ACK, b, 0, 0)
#endif
  :: kind == CHUNK ->
     in_st[c] = IN_STATE;
     apply_logged(rr, rp, m);
     send_frame(IX(rr,rp), CHUNK_ACK, 0, 0, 0)
  :: kind == STATE_END ->
     if
     :: a > rf[c] -> rf[c] = a
     :: else
     fi;
     in_st[c] = IN_DELTAS;
     expect[c] = a;
     send_frame(IX(rr,rp), ACK, a, 0, 0)
  :: kind == CHUNK_ACK ->
     assert(chunks_out[c] > 0);
     chunks_out[c]--
  :: kind == ACK && out_st[c] == WAIT_RESUME ->
     /* the resume point (§4): a durable peer never claims more than we have */
     assert(a <= head[rr]);
#ifdef BUG_TRIM_PAST_ACK
     if
     :: true ->
#else
     if
     :: floor[rr] <= a ->
#endif
        if
        :: a > pack[c] -> pack[c] = a; trimmable[rr] = true
        :: else
        fi;
        last_sent[c] = a; last_acked[c] = a;
        out_st[c] = DELTAS
     :: else ->
        /* acks alone never force a state transfer: only retention trims past a peer's
           received_from (§4 "Trimming": entries acknowledged by every known peer) */
        assert(ackfloor[rr] <= a);
        last_acked[c] = a;
        out_st[c] = XFER; xfer_head[c] = head[rr];
        xfer_phase[c] = (state[rr] != 0 -> 1 : 2)
     fi
  :: kind == ACK && out_st[c] != WAIT_RESUME ->
     /* §4: a later ACK lies in [last acked, last sent end] and acknowledges one frame */
     assert(a >= last_acked[c] && a <= last_sent[c] && inflight[c] > 0);
     inflight[c]--;
     last_acked[c] = a;
     if
     :: a > pack[c] -> pack[c] = a; trimmable[rr] = true
     :: else
     fi;
     /* the properties: no replica acks what it has not applied, and
        peer_ack(rp) at rr <= received_from(rr) at rp */
     check_ack_covers(rr, rp, a);
     assert(pack[c] <= rf[IX(rp,rr)])
  fi
}

/* r may send its next frame to p (§4, §5, §8): the window has room and there is a next
   entry (retained, or trimmed with nothing in flight: then a state transfer starts) or a
   transfer to continue. */
#define CAN_SEND(r, p) (up[IX(r,p)] && inflight[IX(r,p)] + chunks_out[IX(r,p)] < WIN && \
   ((out_st[IX(r,p)] == DELTAS && last_sent[IX(r,p)] < head[r] && \
     (floor[r] <= last_sent[IX(r,p)] || SKIPS_FLOOR || \
      (inflight[IX(r,p)] == 0 && chunks_out[IX(r,p)] == 0))) || out_st[IX(r,p)] == XFER))
#ifdef BUG_TRIM_PAST_ACK
#define SKIPS_FLOOR 1
#else
#define SKIPS_FLOOR 0
#endif

inline send_one(sr, sp) {
  c = IX(sr,sp);
  if
  :: out_st[c] == DELTAS ->
#ifdef BUG_TRIM_PAST_ACK
     if
     :: true ->
#else
     /* the floor check and the read are one read transaction (§4) */
     if
     :: floor[sr] <= last_sent[c] ->
#endif
        b = last_sent[c] + 1;
#ifdef BUG_BACK_PROPAGATE
        m = (b > floor[sr] -> logm[sr*L + b] : 0);
#else
        m = (b > floor[sr] && logo[sr*L + b] != sp -> logm[sr*L + b] : 0);
#endif
        /* a trimmed entry is never needed by a peer whose ack is below it without a state
           transfer: every entry this DELTA covers is retained */
        assert(floor[sr] <= last_sent[c]);
        send_frame(c, DELTA, last_sent[c], b, m);
        last_sent[c] = b;
        inflight[c]++
     :: else ->
        /* entries after what was sent were trimmed, nothing in flight (CAN_SEND): a state
           transfer (§3), which only retention, not acks, can force */
        assert(ackfloor[sr] <= last_sent[c]);
        out_st[c] = XFER; xfer_head[c] = head[sr];
        xfer_phase[c] = (state[sr] != 0 -> 1 : 2)
     fi
  :: out_st[c] == XFER && xfer_phase[c] == 1 ->
     /* one chunk: the whole state, read when it is sent (§5) */
     send_frame(c, CHUNK, 0, 0, state[sr]);
     chunks_out[c]++;
     xfer_phase[c] = 2
  :: out_st[c] == XFER && xfer_phase[c] == 2 ->
     send_frame(c, STATE_END, xfer_head[c], 0, 0);
     inflight[c]++;
     last_sent[c] = xfer_head[c];
     xfer_phase[c] = 0;
     out_st[c] = DELTAS
  fi
}

/* The per-peer branches of a replica's loop. A branch's first statement is its guard, so
   that an atomic branch either runs whole or is not enabled. */
#define DIAL(P) :: atomic { (P < N && P > r && ADJ(r,P) && !up[IX(r,P)]) -> p = P; connect(r, p) }
#define RECV(P) :: atomic { (P < N && P != r && nempty(link[IX(P,r)]) && NOT_HELD(P)) -> \
                            p = P; receive_one(r, p) }
#define SEND(P) :: atomic { (P < N && P != r && CAN_SEND(r, P)) -> p = P; send_one(r, p) }
#ifdef BUG_ACK_BEFORE_APPLY
#define NOT_HELD(P) (!held[IX(r,P)])
#define APPLY_HELD(P) :: atomic { (P < N && P != r && held[IX(r,P)]) -> p = P; \
       apply_logged(r, p, held_mask[IX(r,p)]); \
       if \
       :: held_end[IX(r,p)] > rf[IX(r,p)] -> rf[IX(r,p)] = held_end[IX(r,p)] \
       :: else \
       fi; \
       held[IX(r,p)] = false }
#else
#define NOT_HELD(P) 1
#define APPLY_HELD(P)
#endif

proctype Replica(byte r) {
end:
  do
  /* a local write, one transaction: state, log entry (§0) */
  :: atomic { r < WR && nwrites[r] < W ->
       m = 1 << (r*W + nwrites[r]);
       nwrites[r]++;
       apply_logged(r, r, m) }
  /* the periodic trim, when an ack or the head moved since the last one */
  :: atomic { trimmable[r] -> trimmable[r] = false; trim(r) }
  DIAL(0) DIAL(1) DIAL(2)
  RECV(0) RECV(1) RECV(2)
  APPLY_HELD(0) APPLY_HELD(1) APPLY_HELD(2)
  SEND(0) SEND(1) SEND(2)
  od
}

/* Faults: a connection breaks, a replica crashes and restarts, a bounded number of times
   each, so the network eventually heals. */
#define BREAK(X, Y) :: atomic { (drops < DROPS && Y < N && up[IX(X,Y)]) -> \
                                drops++; disconnect(X, Y) }
#define CRASH(X) :: atomic { (crashes < CRASHES && X < N) -> crashes++; crash(X) }
active proctype Faults() {
end:
  do
  BREAK(0, 1) BREAK(0, 2) BREAK(1, 2)
  CRASH(0) CRASH(1) CRASH(2)
  od
}

init {
  byte i;
  atomic {
    for (i : 0 .. N-1) { run Replica(i) }
  }
}

#define ALLHAVE_2 (state[0] == ALL && state[1] == ALL)
#if N == 2
#define ALLHAVE ALLHAVE_2
#else
#define ALLHAVE (ALLHAVE_2 && state[2] == ALL)
#endif

/* Convergence at quiescence, a safety check: when nothing can move any more (every write
   made, every fault spent, every connection open, every frame sent and answered), every
   replica holds every write. `timeout` is enabled exactly in such a state. */
active proctype Quiescence() {
  timeout -> assert(ALLHAVE)
}

/* Liveness (check with pan -a -f): every write, acknowledged to its caller when its
   transaction committed, reaches every replica once the faults stop. */
ltl converge { <> [] ALLHAVE }
