/* tcpclose: the one event layout shared by the BPF program and user space.
 *
 * agent/record/layout.py mirrors this struct as a numpy dtype and reads the
 * #defines below from this file; tests/unit/test_layout.py compiles this header
 * with the host C compiler and checks every offset and the size.
 *
 * One record describes one socket *life*: from its first state transition to
 * its ->CLOSE (kind EV_LIFE), or to the end of tracing (kind EV_OPEN, read
 * from the socks map).  The kernel recycles socket addresses within a second,
 * so a life never spans a ->CLOSE.
 */
#ifndef TCPCLOSE_H
#define TCPCLOSE_H

#include <linux/types.h>

/* record kinds */
#define EV_LIFE        1 /* a life that reached ->CLOSE */
#define EV_OPEN        2 /* a life still open when tracing ended */
#define EV_RESET_SENT  3 /* tcp_send_reset on a socket that had just gone ->CLOSE */
#define EV_TW_END      4 /* a timewait socket's timer expired or was cancelled (tw_* fields only) */
#define EV_TW_OPEN     5 /* never emitted: the kind of a timewait alive when tracing ended, read from its map */

/* how a timewait socket ended, as its timer tells (EV_TW_END, tw_end) */
#define TW_EXPIRED     1 /* timer_expire_entry: the natural end, TIME_WAIT or tcp_fin_timeout */
#define TW_CANCELLED   2 /* timer_cancel with no expiry or re-arm after it: killed (or a reuse TW_REUSED missed) */
#define TW_REPLACED    3 /* a new timewait socket armed the same timer: this one's end was not seen */
#define TW_REUSED      4 /* cancelled inside a connect() by the same task to the same remote end: reused */

/* how the owner (pid, tid, comm, cgroup_id) was learnt */
#define OWNER_NONE     0 /* never seen in a trustworthy context */
#define OWNER_SYSCALL  1 /* taken at a transition made by the owner's own syscall */
#define OWNER_LISTENER 2 /* a server-side child: the owner of its listener */
#define OWNER_AMBIGUOUS 3 /* a server-side child of a listener several processes share: not credited */

/* flags */
#define FLAG_RST_RECEIVED 0x01 /* tcp_receive_reset on this life */
#define FLAG_RST_SENT     0x02 /* tcp_send_reset while this life was open */
#define FLAG_PARTIAL      0x04 /* first seen mid-life: opened before tracing (or evicted) */
#define FLAG_MISSED_CLOSE 0x08 /* its ->CLOSE never reached us: ended when the address was reused */

/* TCP states as the tracepoint reports them (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT    2
#define TCP_SYN_RECV    3
#define TCP_FIN_WAIT1   4
#define TCP_FIN_WAIT2   5
#define TCP_TIME_WAIT   6
#define TCP_CLOSE       7
#define TCP_CLOSE_WAIT  8
#define TCP_LAST_ACK    9
#define TCP_LISTEN      10
#define TCP_CLOSING     11
#define TCP_NEW_SYN_RECV 12

/* indexes of the per-CPU counters array */
#define C_RINGBUF_DROPS  0 /* records lost: the ring buffer was full */
#define C_LIVES_STARTED  1 /* lives inserted into socks */
#define C_LIVES_ENDED    2 /* lives removed from socks at ->CLOSE */
#define C_SOCKS_FULL     3 /* lives that could not be inserted into socks */
#define C_LIVES_FILTERED 4 /* lives ended but not handed over (pid/comm filter) */
#define C_PARTIAL        5 /* lives first seen mid-way */
#define C_MISSED_CLOSE   6 /* lives whose ->CLOSE was skipped (see FLAG_MISSED_CLOSE) */
#define C_TW_LINKED      7 /* timewait sockets linked to the life that made them */
#define C_TW_UNLINKED    8 /* timewait timers armed that no ->CLOSE on that CPU claimed */
#define C_TW_ENDED       9 /* timewait sockets whose end was handed over (EV_TW_END) */
#define C_PROCS_FULL     10 /* --aggregates: lives of a process the procs map had no room for */
#define C_TRANSITIONS    11 /* --transitions: transitions offered to the transitions ring buffer */
#define C_TRANSITION_DROPS 12 /* --transitions: of those, lost: the ring buffer was full */
#define C_TW_FULL        13 /* timewait sockets not followed: the tws map was full */
#define C_FIGURES_FULL   14 /* agent: lives, TIME_WAIT ends or ports held not counted: no room in figures or held */
#define C_TW_STALE_END   15 /* timewait ends dropped: older than the start of the timewait their entry held by then */
#define NR_COUNTERS      16

/* --aggregates: what each process's ended lives came to (the procs map), indexes of
 * struct tcpclose_proc_counts.  The close kinds mirror agent/lifecycle.initiators. */
#define A_LIVES             0
#define A_ACTIVE            1
#define A_PASSIVE           2
#define A_SIMULTANEOUS      3
#define A_RESET_LOCAL       4
#define A_RESET_REMOTE      5
#define A_NEVER_ESTABLISHED 6
#define A_TIMEWAIT          7 /* active and simultaneous closes: each hands over to a timewait socket */
#define A_CLOSE_UNSEEN      8 /* ended with no FIN seen and its ->CLOSE skipped: how it ended is not known */
#define NR_AGGREGATES       9

#define COMM_LEN 16

struct tcpclose_event {
	__u64 ts_ns;         /* monotonic: the latest transition (the ->CLOSE for EV_LIFE) */
	__u64 opened_ns;     /* first transition of this life */
	__u64 estab_ns;      /* ->ESTABLISHED, 0 if never */
	__u64 close_wait_ns; /* ESTABLISHED->CLOSE_WAIT: the peer's FIN came first; 0 if not */
	__u64 fin_ns;        /* our own FIN: ->FIN_WAIT1 or CLOSE_WAIT->LAST_ACK; 0 if not */
	__u64 skaddr;        /* kernel address of the socket: identity within one life */
	__u64 cgroup_id;     /* owner's cgroup v2 id */
	__u32 pid;           /* owner's tgid (what users call the pid) */
	__u32 tid;           /* owner's thread id */
	char comm[COMM_LEN]; /* owner's thread name */
	__u8 saddr[16];      /* local address (first 4 bytes for AF_INET) */
	__u8 daddr[16];      /* remote address */
	__u16 sport;         /* local port, host order */
	__u16 dport;         /* remote port, host order */
	__u16 family;        /* AF_INET or AF_INET6 */
	__u16 states;        /* bitmask of states entered: 1 << TCP_x */
	__u8 kind;           /* EV_x */
	__u8 owner_src;      /* OWNER_x */
	__u8 last_state;     /* EV_LIFE: the state left by ->CLOSE; EV_OPEN: the current state */
	__u8 flags;          /* FLAG_x */
	__u32 tw_timeout;    /* jiffies the timewait timer was first armed for (TIME_WAIT: 60 s) */
	/* The timewait socket this life handed over to at FIN_WAIT2/CLOSING->CLOSE
	 * (EV_LIFE), or whose end this record reports (EV_TW_END).  The timer's
	 * address and arming time together name one timewait socket. */
	__u64 tw_timer;      /* address of its timer_list; 0: no timewait socket was seen */
	__u64 tw_start_ns;   /* timer_start that created it */
	__u64 tw_rearm_ns;   /* the last re-arm (the peer's FIN ending the FIN_WAIT2 substate); 0 if none */
	__u8 tw_end;         /* EV_TW_END: TW_x */
	__u8 pad[7];
};

/* --transitions: one record per state transition, in its own ring buffer, so
 * that a reader falling behind on this stream never costs a life record. */
struct tcpclose_transition {
	__u64 ts_ns;         /* monotonic */
	__u64 skaddr;
	__u32 pid;           /* the life's owner as known after this transition (see owner_src) */
	__u32 task_pid;      /* the task the transition ran in: the owner, the peer, ksoftirqd, 0 (idle) */
	char comm[COMM_LEN]; /* the owner's comm */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 oldstate;       /* TCP_x */
	__u8 newstate;
	__u8 owner_src;      /* OWNER_x: OWNER_NONE while the owner is not known */
	__u8 pad[7];
};

/* --aggregates: the key of the procs map; pid 0 and an empty comm: owner never learnt */
struct tcpclose_proc_key {
	__u32 pid;
	char comm[COMM_LEN];
};

struct tcpclose_proc_counts {
	__u64 n[NR_AGGREGATES];
};

/* tcpclose agent (FIGURES): each owner's figures, made in BPF, so that nothing per life
 * reaches user space.  Histogram bounds in microseconds, as lists X(bound) X(bound) ...
 * (read by agent/record/layout.py, LISTS): a value v lands in the first bucket whose bound is >= v (Prometheus' "le"),
 * the last bucket is above every bound.  TIME_WAIT lifetimes: the 60 s of TCP_TIMEWAIT_LEN
 * to the half second either side (a timer wheel expires a little late), and below it the
 * FIN_WAIT2 substate (tcp_fin_timeout) and the TIME_WAITs killed or reused early. */
#define TW_BOUNDS_US(X) X(100000) X(500000) X(1000000) X(2000000) X(5000000) X(10000000) \
	 X(30000000) X(58000000) X(59500000) X(60000000) X(60500000) X(61000000) X(62000000) \
	 X(65000000) X(90000000) X(120000000)
#define NR_TW_BOUNDS 16
#define DURATION_BOUNDS_US(X) X(500) X(1000) X(5000) X(10000) X(50000) X(100000) X(500000) \
	 X(1000000) X(5000000) X(10000000) X(60000000) X(300000000) X(3600000000)
#define NR_DURATION_BOUNDS 13
#define NR_TW_ENDS 5 /* tw_end[TW_x]; [0] unused (an end read before its start is dropped: C_TW_STALE_END) */

struct tcpclose_figures {
	__u64 n[NR_AGGREGATES];               /* the lives that ended, by A_x (close_kind) */
	__u64 tw_followed;                    /* TIME_WAITs made whose timer was followed */
	__u64 tw_end[NR_TW_ENDS];             /* TIME_WAITs ended, by TW_x */
	__u64 tw_life[NR_TW_BOUNDS + 1];      /* their lifetimes, by bucket */
	__u64 tw_life_us;                     /* the sum of those lifetimes */
	__u64 duration[NR_DURATION_BOUNDS + 1]; /* lives from their first transition to ->CLOSE, whole ones only */
	__u64 duration_us;
	/* the owner, whose hash is the key: written on the CPU that made the entry, 0 on the others */
	__u64 cgroup_id;
	__u32 pid;                            /* 0 and "": the owner was never learnt */
	char comm[COMM_LEN];
	__u32 pad;
};

/* tcpclose agent (FIGURES): the client TIME_WAITs alive towards one destination, on one CPU */
struct tcpclose_held {
	__s64 n;      /* +1 at each one followed on this CPU, -1 at each end here: the CPUs' sum is the count */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 dport;
	__u16 family; /* written on the CPU that made the entry, 0 on the others */
	__u32 pad;
};

#endif /* TCPCLOSE_H */
