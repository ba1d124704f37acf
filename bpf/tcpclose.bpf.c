/* tcpclose: follow every TCP socket life and hand user space one record per life.
 *
 * Compiled by bcc at start-up (agent/kernel/probe.py).  It reads tracepoint
 * arguments only, never kernel struct fields: the headers bcc compiles
 * against may belong to another kernel, so struct offsets may be wrong,
 * while tracepoint formats are read from the running kernel's tracefs.
 *
 * The file is in the order of the flow: limits and maps, filters, the owner,
 * lives, TIME_WAIT, aggregates, transitions, then the entry points.  It stays
 * one file: bcc rewrites map calls only in the main file it compiles.
 *
 * Filters arrive as -D defines (single values) and the port_filter map (lists):
 *   FILTER_FAMILY  AF_INET or AF_INET6       FILTER_LPORTS/FILTER_RPORTS  use port_filter
 *   FILTER_TGID    owner's tgid              FILTER_COMM  use comm_filter (the owner's comm)
 * and sizes as SOCK_SLOT_BITS, MAX_SOCKS, MAX_LISTENERS, TW_SLOT_BITS, MAX_TWS, RINGBUF_PAGES
 * (MAX_PROCS with AGGREGATES).
 * AGGREGATES (trace --aggregates) counts each life for its owner in the procs
 * map instead of handing over a record: no per-connection rows, nothing to read.
 * FIGURES (tcpclose agent) makes each owner's figures in the figures map (MAX_FIGURES):
 * closes by kind, connection durations, TIME_WAITs and their ends with lifetimes, and
 * the client TIME_WAITs alive per destination in held (MAX_HELD); only the lives user
 * space still has to look at are handed over, unless RECORDS (agent -o) asks for all.
 * TRANSITIONS (trace --transitions) also hands over every transition, in a ring
 * buffer of its own (TRANSITION_PAGES), with its own count of what was lost.
 * TW_TIMER_FN, the address of tw_timer_handler from /proc/kallsyms, turns on
 * the following of timewait sockets through their timers (see "TIME_WAIT").
 */
#include "tcpclose.h"

/* tcp:tcp_send_reset has an `enum sk_rst_reason` field since Linux 6.10; the
 * headers bcc compiles against may be older and lack it.  We never read the
 * field, so give it a local name that every set of headers accepts. */
#define sk_rst_reason tcpclose_sk_rst_reason
enum tcpclose_sk_rst_reason { TCPCLOSE_RST_REASON_UNUSED };

#define IPPROTO_TCP 6
#define AF_INET 2
#define AF_INET6 10

/* ==== Limits and maps ======================================================================= */

/* The life of every TCP socket being followed: the record that will be handed
 * over, filled in as the life goes on, from the first transition seen for a
 * socket address to its ->CLOSE (cleared after the record is copied out).
 * It is kept in one of two places:
 *   sock_slots  an array of SOCK_SLOTS records, a direct-mapped table: a
 *               socket's slot is picked by its address (slot_of); a slot is
 *               free while its skaddr is 0 and taken with a compare-and-swap
 *               of skaddr, so two CPUs cannot take one slot for two sockets;
 *   socks       an LRU hash keyed by skaddr, for the sockets whose slot was
 *               taken by another (MAX_SOCKS entries, what --max-sockets leaves
 *               after the slots).
 * Why two: at full churn a few dozen sockets are alive at once, and each life
 * costs an insert and a delete, each of which the LRU map pays with its LRU
 * lists' lock and its bucket lock.  The array's lookup is inlined by the
 * verifier, a slot is taken with one compare-and-swap and freed with one
 * store (what that saved: docs/overhead.md, "What keeps the cost low").
 * A missed ->CLOSE: the next life on the same socket address (slab memory is
 * reused at once under churn) ends it, counted (C_MISSED_CLOSE); the LRU map
 * also evicts its least recently used entry when full.  User space counts
 * evictions as C_LIVES_STARTED - C_LIVES_ENDED - lives left at the end.
 */
#define SOCK_SLOTS (1 << SOCK_SLOT_BITS)
BPF_ARRAY(sock_slots, struct tcpclose_event, SOCK_SLOTS);
BPF_TABLE("lru_hash", u64, struct tcpclose_event, socks, MAX_SOCKS);

/* listeners: the owner of each listening socket, for its children.
 *   key    family, local address (all 0: any address) and port
 *   value  the first listener's owner and skaddr, how many listening sockets share
 *          the key, and whether more than one process does
 *   filled at CLOSE->LISTEN (the owner's listen()), and at start by user space for the
 *   listeners that already exist (skaddr 0: not known); a listen() on a key another
 *   process holds marks it shared; cleared when the last listener on it closes.
 * A child socket appears as LISTEN->SYN_RECV in softirq, with no trustworthy task, so
 * it starts with the owner of the listener on its local address, else on any address.
 * The tracepoint carries no network namespace and no pointer to the listener, so a key
 * shared by several processes (an SO_REUSEPORT group, or the same address and port in
 * several network namespaces, loopback above all) names no one: such a child starts
 * OWNER_AMBIGUOUS, and is credited at its owner's first transition of its own, or from
 * the kernel's fd tables at the end (agent/analysis/lives.py).  A pre-forking server's
 * workers inherit the master's listener without a listen() of their own: their children
 * start with the master (OWNER_LISTENER) until a worker acts on them, and the fd tables
 * name the worker for those still open at the end.
 */
struct listener_key {
	u8 addr[16];         /* first 4 bytes for AF_INET */
	u16 port;
	u16 family;
};
struct listener {
	u64 skaddr;
	u64 cgroup_id;
	u32 pid;
	u32 tid;
	char comm[COMM_LEN];
	u32 members;         /* listening sockets on this key */
	u32 shared;          /* 1: more than one process listens on this key */
};
BPF_HASH(listeners, struct listener_key, struct listener, MAX_LISTENERS);

/* port_filter: bit 0 = local port listed (-L), bit 1 = remote port listed (-D). */
BPF_ARRAY(port_filter, u8, 65536);

#ifdef FILTER_COMM
/* comm_filter: the one owner name -c asks for, NUL-padded, filled by user space before
 * attaching.  A name is data, never C source: any 15 bytes, quotes and backslashes too. */
struct comm_name {
	char comm[COMM_LEN];
};
BPF_ARRAY(comm_filter, struct comm_name, 1);
#endif

BPF_PERCPU_ARRAY(counters, u64, NR_COUNTERS);

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

#ifdef TW_TIMER_FN
#define TW_LINK_WINDOW_NS 1000000 /* timer_start to ->CLOSE: microseconds; 1 ms is generous */

/* Every timewait socket being followed, by the address of its timer_list, kept
 * in one of two places as the lives are (see sock_slots):
 *   tw_slots  an array of TW_SLOTS entries, a direct-mapped table: a timer's
 *             slot is picked by its address (tw_slot_of); free while its timer
 *             is 0, taken with a compare-and-swap of timer;
 *   tws       a plain hash (MAX_TWS entries) for the timers whose slot was taken.
 *   filled when a life that is handed over claims a timewait timer (end_life);
 *          both full: that timewait is not followed, counted in C_TW_FULL
 *   cleared when its end is handed over (end_timewait)
 *   a missed end: a new timewait arming the same timer ends the old entry
 *   (TW_REPLACED); an entry no timer event ever comes for again is swept by
 *   user space once its timer must have fired (Probe.sweep_timewaits).  User
 *   space counts both as C_TW_LINKED - C_TW_ENDED - entries left at the end.
 * Why two: at full churn tens of thousands are followed at once, and a hash
 * insert and delete for each cost more than a slot's one compare-and-swap and
 * one store (docs/overhead.md, "What keeps the cost low").  A plain hash, not
 * an LRU one, for the rest: the LRU's inserts and deletes cost more, and its
 * eviction is not needed, since an entry's staleness is known from its timer.
 * Entries are changed in place without a lock, in a slot as in the hash: one
 * timer's events follow one another (the kernel detaches a timer under its
 * base's lock, so a kill on one CPU and an expiry on another do not both
 * cancel it), and a timewait is stored by the ->CLOSE that follows its arming.
 */
struct tw_state {
	u64 timer;     /* its timer_list's address (in tw_slots, 0: the slot is free) */
	u64 start_ns;  /* timer_start that created it */
	u64 rearm_ns;  /* the last re-arm, 0 if none */
	u64 cancel_ns; /* timer_cancel seen and not yet explained, 0 if none */
	u32 timeout;   /* jiffies of the first arming */
	u16 dest;      /* dest_hash() of its life's remote address and port */
	u16 reused;    /* its pending cancel came in a connect() to that remote end (in_connect) */
	u64 owner;     /* FIGURES: its life's owner's key in figures; 0: not counted */
	u64 held;      /* FIGURES: a client's: its destination's key in held; 0: none */
};
#define TW_SLOTS (1 << TW_SLOT_BITS)
BPF_ARRAY(tw_slots, struct tw_state, TW_SLOTS);
BPF_HASH(tws, u64, struct tw_state, MAX_TWS);

/* tw_pages: the memory pages that have held a timewait timer, one bit each.
 *   index  the timer's page number (address >> 12), modulo TW_PAGE_BITS
 *   set    at every timewait timer_start; never cleared
 * timer_cancel runs for every kernel timer, about 7 times a connection at
 * full churn, and timer_expire_entry for every expiry; looking each timer up
 * in tws costs a cache miss on most lookups (the map's buckets are megabytes),
 * and a timer not followed misses its slot in tw_slots, then looks in tws.
 * A timer whose page bit is clear was never a timewait timer, so it is not
 * followed: its lookup is skipped.  A set bit only means "look": pages are
 * reused, and bits alias (page numbers wrap), so a few other timers are
 * looked up for nothing.  Timewait sockets come from a slab cache of their
 * own, so they fill few pages: about 16 000 for 262 144 of them (16
 * tw_sock_TCP objects a page).  2^18 bits (32 KiB) stay in cache. */
#define TW_PAGE_BITS (1 << 18)
BPF_ARRAY(tw_pages, u64, TW_PAGE_BITS / 64);

/* tw_cpu: what the last timer events on this CPU left to decide. */
struct tw_cpu {
	u64 armed_timer;  /* a timewait timer just armed here, not yet claimed by a ->CLOSE */
	u64 armed_ns;
	u64 last_cancel;  /* the timer of this CPU's latest timer_cancel */
	u64 pending_kill; /* a followed timewait cancelled here: killed, unless expiry or re-arm follows */
	u64 undo_rearm_ns;   /* armed_rearm: the followed timewait's rearm_ns and cancel_ns */
	u64 undo_cancel_ns;  /* before it was taken as re-armed (0: none was followed) */
	u32 armed_timeout;
	u32 armed_rearm;  /* armed_timer was cancelled just before: a re-arm unless a ->CLOSE claims it */
	u64 connect_task; /* the task (pid_tgid) whose socket entered SYN_SENT last here, */
	u64 connect_ns;   /* when, */
	u32 connect_dest; /* and towards which remote end (dest_hash) */
	u32 undo_reused;  /* armed_rearm: the followed timewait's reused flag before it was taken as re-armed */
};
BPF_PERCPU_ARRAY(tw_cpu, struct tw_cpu, 1);
#endif /* TW_TIMER_FN */

#ifndef FIGURES
#define CLOCK_AT_CLOSE 0
#endif

#ifdef AGGREGATES
/* procs (--aggregates): per-process counts instead of one record per life.
 *   key    owner's tgid and comm (0 and "" when the owner was never learnt)
 *   value  struct tcpclose_proc_counts, indexed by A_x
 *   filled at each life's end; never cleared: user space reads it at the end.
 *   Full (MAX_PROCS owners): the life is counted in C_PROCS_FULL instead.
 */
BPF_HASH(procs, struct tcpclose_proc_key, struct tcpclose_proc_counts, MAX_PROCS);
#endif

#ifdef FIGURES
#define CLOCK_AT_CLOSE 1
/* figures (tcpclose agent): what each owner's lives and TIME_WAITs came to.
 *   key    owner_figures(): a 64-bit hash of the owner's tgid, comm and cgroup id (all 0
 *          when never learnt), so that a timewait keeps 8 bytes to find its owner's entry
 *          when it ends; the owner itself is in the value
 *   value  struct tcpclose_figures, one per CPU: plain adds, no atomics on a cache line
 *          two CPUs closing one process's lives would pass back and forth
 *   filled at each life's end and each TIME_WAIT's; user space sums the CPUs, and deletes
 *   the entries of processes gone whose figures stopped moving (metrics.owners)
 *   Full: counted in C_FIGURES_FULL.  A new entry is made from figures_new, this CPU's
 *   scratch copy: struct tcpclose_figures is too big for the 512-byte stack. */
BPF_PERCPU_HASH(figures, u64, struct tcpclose_figures, MAX_FIGURES);
BPF_PERCPU_ARRAY(figures_new, struct tcpclose_figures, 1);

/* held: the client TIME_WAITs alive per destination: each holds its local port
 * against connect()s to that remote end (analysis/ports.py).
 *   key    a 64-bit hash of the destination (both addresses, remote port, family)
 *   value  the count on this CPU (a TIME_WAIT made on one CPU may end on another: the
 *          sum over the CPUs is the count) and the destination, on the CPU that made it
 *   +1 when a client's timewait is followed, -1 when it ends (or is swept: user space
 *   keeps those apart).  Full: not counted, in C_FIGURES_FULL. */
BPF_PERCPU_HASH(held, u64, struct tcpclose_held, MAX_HELD);
BPF_PERCPU_ARRAY(held_new, struct tcpclose_held, 1); /* a new entry, made here: the stack is full */
#endif

#ifdef TRANSITIONS
/* transitions (--transitions): every transition of a followed socket.  A ring
 * buffer of its own: it is ten times the rate of life records, and a reader
 * that cannot keep up with it must not make the life records drop. */
BPF_RINGBUF_OUTPUT(transitions, TRANSITION_PAGES);
#endif

static __always_inline void count(int idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* Hand a record to user space without waking it: the reader polls the ring
 * buffer in batches.  A wakeup per record costs the traced workload several
 * microseconds (DESIGN.md section 4); polling costs it nothing. */
static __always_inline void emit(struct tcpclose_event *e)
{
	if (events.ringbuf_output(e, sizeof(*e), BPF_RB_NO_WAKEUP) != 0)
		count(C_RINGBUF_DROPS);
}

/* ==== Filters =============================================================================== */

/* Does the socket fall outside the address filters?  Cheapest tests first. */
static __always_inline bool filtered_out(u16 family, int lport, int rport)
{
#ifdef FILTER_FAMILY
	if (family != FILTER_FAMILY)
		return true;
#endif
#if defined(FILTER_LPORTS) || defined(FILTER_RPORTS)
	u8 *lp = port_filter.lookup(&lport);
	u8 *rp = port_filter.lookup(&rport);
#ifdef FILTER_LPORTS
	if (!lp || !(*lp & 1))
		return true;
#endif
#ifdef FILTER_RPORTS
	if (!rp || !(*rp & 2))
		return true;
#endif
#endif
	return false;
}

/* Is the life's owner one the user did not ask for?  Applied when it ends,
 * because the owner is only known by then. */
static __always_inline bool owner_filtered_out(struct tcpclose_event *e)
{
#ifdef FILTER_TGID
	if (e->pid != FILTER_TGID)
		return true;
#endif
#ifdef FILTER_COMM
	u32 zero = 0;
	struct comm_name *want = comm_filter.lookup(&zero);
	if (!want)
		return true;
#pragma unroll
	for (int i = 0; i < COMM_LEN; i++) {
		if (e->comm[i] != want->comm[i])
			return true;
		if (want->comm[i] == 0)
			break;
	}
#endif
	return false;
}

/* ==== The owner ============================================================================= */

/* Is the current task the socket's owner for this transition?  Only when the
 * transition is made by the owner's own syscall (connect, listen, close,
 * shutdown, or the exit path closing its files).  Packet-driven transitions
 * run in softirq, in timers, in the *peer's* syscall (loopback delivers the
 * peer's FIN inside the peer's close()), or in the owner's task replaying its
 * backlog; crediting the current task there names swapper, ksoftirqd or the
 * peer.  See DESIGN.md section 1. */
static __always_inline bool current_is_owner(int old, int new)
{
	if (old == TCP_CLOSE)                        /* listen(), connect() */
		return new == TCP_LISTEN || new == TCP_SYN_SENT;
	if (new == TCP_FIN_WAIT1)                    /* close()/shutdown(): active closer */
		return old == TCP_ESTABLISHED || old == TCP_SYN_RECV;
	if (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK) /* close(): passive closer */
		return true;
	if (old == TCP_FIN_WAIT2 && new == TCP_FIN_WAIT2) /* close() after shutdown() */
		return true;
	return false;
}

static __always_inline void take_owner(struct tcpclose_event *e)
{
	u64 id = bpf_get_current_pid_tgid();
	e->pid = id >> 32;
	e->tid = (u32)id;
#ifndef AGGREGATES /* the procs map is keyed by pid and comm only */
	e->cgroup_id = bpf_get_current_cgroup_id();
#endif
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->owner_src = OWNER_SYSCALL;
}

/* The listeners map's key for a socket's local end. */
static __always_inline void listener_key(struct listener_key *k, u16 family, u16 port, const void *saddr,
					 const void *saddr_v6)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	k->port = port;
	if (family == AF_INET6)
		bpf_probe_read_kernel(k->addr, 16, saddr_v6);
	else
		bpf_probe_read_kernel(k->addr, 4, saddr);
}

/* Listening sockets are followed in the listeners map only: they are not
 * connections, and their children need their owner.  listen() is the owner's
 * own syscall; a listener's close() too. */
static __always_inline void track_listener(u64 sk, struct listener_key *k, int old, int new)
{
	struct listener *l = listeners.lookup(k);
	u64 id = bpf_get_current_pid_tgid();
	if (new == TCP_LISTEN) {
		if (!l) {
			struct listener n = {};
			n.skaddr = sk;
			n.pid = id >> 32;
			n.tid = (u32)id;
			n.cgroup_id = bpf_get_current_cgroup_id();
			bpf_get_current_comm(n.comm, sizeof(n.comm));
			n.members = 1;
			/* only where there is none: two processes that listen() on the key at once,
			 * on two CPUs, both find none, and the second must not overwrite the first */
			if (listeners.insert(k, &n) == 0)
				return;
			l = listeners.lookup(k);
			if (!l)
				return;
		}
		/* another listening socket on the key: whose children are whose is unknown */
		__sync_fetch_and_add(&l->members, 1);
		if (l->pid != id >> 32)
			l->shared = 1;
	} else if (l) {
		if (l->members <= 1)
			listeners.delete(k);
		else
			__sync_fetch_and_add(&l->members, -1); /* (BPF has no atomic sub) */
	}
}

/* The listener a new child socket came through: the one on its local address, else the
 * one on any address (the key is changed to that one's). */
static __always_inline struct listener *listener_of(struct listener_key *k)
{
	struct listener *l = listeners.lookup(k);
	if (l)
		return l;
	__builtin_memset(k->addr, 0, sizeof(k->addr));
	return listeners.lookup(k);
}

/* ==== Lives ================================================================================= */

/* A socket's slot is its address in 2 KiB units, modulo SOCK_SLOTS.  TCP
 * sockets are slab objects of more than 2 KiB (/proc/slabinfo on 6.18: TCP
 * 2368 bytes, TCPv6 2496), so the sockets of one slab (13 in 8 pages) take
 * slots next to each other, and the few dozen alive at once under churn,
 * handed out again and again from a few slabs, sit in a few pages of the
 * array.  Scattered over all of it (12 MiB by default) by a multiplicative
 * hash, as at first, they cost the state-change program 17-30 ns a run more,
 * 4-8 % (both modes, tracers taking turns on the same churn); cache and TLB
 * misses, most likely, which this VM has no counters to show.  Objects
 * smaller than 2 KiB would only share slots: the second one of a pair is
 * followed in the socks map. */
#define SOCK_SLOT_SHIFT 11
static __always_inline struct tcpclose_event *slot_of(u64 sk)
{
	u32 idx = (u32)(sk >> SOCK_SLOT_SHIFT) & (SOCK_SLOTS - 1);
	return sock_slots.lookup(&idx);
}

/* The life followed for socket sk, or NULL.  Only sk's own transitions (which
 * the socket's lock serialises) store, change or free its slot. */
static __always_inline struct tcpclose_event *find_life(u64 sk)
{
	struct tcpclose_event *s = slot_of(sk);
	if (s && s->skaddr == sk)
		return s;
	return socks.lookup(&sk);
}

/* Follow a new life: in its slot if free, else in the LRU map. 0 when stored. */
static __always_inline int store_life(u64 sk, struct tcpclose_event *life)
{
	struct tcpclose_event *s = slot_of(sk);
	if (s && __sync_val_compare_and_swap(&s->skaddr, 0, sk) == 0) {
		__builtin_memcpy(s, life, sizeof(*life)); /* life->skaddr is sk: the slot stays taken */
		return 0;
	}
	return socks.insert(&sk, life);
}

/* Stop following socket sk's life (after it was handed over). */
static __always_inline void forget_life(u64 sk)
{
	struct tcpclose_event *s = slot_of(sk);
	if (s && s->skaddr == sk)
		s->skaddr = 0;
	else
		socks.delete(&sk);
}

/* The owner a new life starts with (its listener's, for a server-side child); the
 * addresses are filled in by the caller, and `local` is the child's local end. */
static __always_inline void start_life(struct tcpclose_event *e, u64 sk, u64 now, struct listener_key *local,
				       int old, int new)
{
	e->skaddr = sk;
	e->opened_ns = now;
	e->kind = EV_OPEN;
	if (old == TCP_LISTEN && new == TCP_SYN_RECV) {
		struct listener *l = listener_of(local);
		if (l && l->shared) {
			e->owner_src = OWNER_AMBIGUOUS;
		} else if (l) {
			e->pid = l->pid;
			e->tid = l->tid;
			e->cgroup_id = l->cgroup_id;
			__builtin_memcpy(e->comm, l->comm, COMM_LEN);
			e->owner_src = OWNER_LISTENER;
		}
	} else if (old != TCP_CLOSE) {
		e->flags |= FLAG_PARTIAL;
		count(C_PARTIAL);
	}
}

/* ==== TIME_WAIT ============================================================================= */

/* ---- TIME_WAIT ----------------------------------------------------------
 *
 * TIME_WAIT never shows on inet_sock_set_state: at FIN_WAIT2/CLOSING->CLOSE
 * the kernel replaces the socket with an inet_timewait_sock, whose timer is a
 * timer_list with the callback tw_timer_handler.  The timer tracepoints carry
 * the timer's address, and timer_start and timer_expire_entry its callback,
 * so a timewait socket is followed by its timer's address from
 *   creation   timer_start(T), then on the same CPU within microseconds the
 *              full socket's ->CLOSE (tcp_time_wait() arms the timer, then
 *              tcp_done() closes the socket): that life claims T;
 *   re-arm     timer_cancel(T) then timer_start(T) on one CPU, and no ->CLOSE
 *              claiming T: mod_timer() moving a pending timer to another
 *              wheel bucket, as when the peer's FIN turns a FIN_WAIT2-substate
 *              timewait (timeout tcp_fin_timeout) into TIME_WAIT (60 s);
 *   expiry     timer_cancel(T) (the wheel detaches it) then
 *              timer_expire_entry(T): the natural end;
 *   early kill timer_cancel(T) and nothing after it for T: a reused 4-tuple,
 *              a SYN into a server-side TIME_WAIT, an RST, namespace teardown
 *              (inet_twsk_deschedule_put).  Decided at this CPU's next timer
 *              event, or at the end of tracing.  The killed socket's memory
 *              may be a new timewait's at once (the slab hands back the object
 *              freed last), so timer_cancel(T) then timer_start(T) is also a
 *              kill when a ->CLOSE claims T: that is the creation of another
 *              timewait socket (see claim_timewait).
 * timer_start is a classic tracepoint, whose format carries the callback and
 * the timeout, so every other timer is passed over at once.  timer_cancel
 * and timer_expire_entry are raw tracepoints: the timer's address
 * is their first argument (ctx->args[0]) and nothing is read through it, so no
 * kernel header is involved; they cost a lookup for every kernel timer.  Raw,
 * because a classic tracepoint program is skipped whenever any classic tracing
 * program is already running on that CPU (the kernel's per-CPU
 * bpf_prog_active), and these fire in the timer softirq and in the paths that
 * interrupt inet_sock_set_state: as classic ones they were skipped ~10 000
 * times a minute at full churn (recursion_misses in run.json), each skip a
 * TIME_WAIT expiry or kill misread.  A raw tracepoint program is skipped only
 * when it interrupts itself.
 */
#ifdef TW_TIMER_FN

/* A timer's slot is its address in 256-byte units, modulo TW_SLOTS: timewait
 * sockets are slab objects of 256 bytes (/proc/slabinfo on 6.18: tw_sock_TCP
 * and tw_sock_TCPv6), so the timers of one slab page never share a slot.
 * Smaller objects would only share slots: the second of a pair goes to tws. */
#define TW_SLOT_SHIFT 8
static __always_inline struct tw_state *tw_slot_of(u64 timer)
{
	u32 idx = (u32)(timer >> TW_SLOT_SHIFT) & (TW_SLOTS - 1);
	return tw_slots.lookup(&idx);
}

/* The timewait followed by this timer, or NULL. */
static __always_inline struct tw_state *find_timewait(u64 timer)
{
	struct tw_state *s = tw_slot_of(timer);
	if (s && s->timer == timer)
		return s;
	return tws.lookup(&timer);
}

/* Follow a timewait (t->timer set): in its slot if free, else in tws.  0 when stored.
 * A slot still holding this very timer is an end that went unseen: taken over. */
static __always_inline int store_timewait(struct tw_state *t)
{
	struct tw_state *s = tw_slot_of(t->timer);
	if (s) {
		u64 was = __sync_val_compare_and_swap(&s->timer, 0, t->timer);
		if (was == 0 || was == t->timer) {
			__builtin_memcpy(s, t, sizeof(*t));
			return 0;
		}
	}
	return tws.update(&t->timer, t);
}

/* Stop following the timewait of this timer (after its end was handed over). */
static __always_inline void forget_timewait(u64 timer)
{
	struct tw_state *s = tw_slot_of(timer);
	if (s && s->timer == timer)
		s->timer = 0;
	else
		tws.delete(&timer);
}

static __always_inline u64 *tw_page_word(u64 timer, u64 *bit)
{
	u32 page = (timer >> 12) & (TW_PAGE_BITS - 1);
	u32 word = page / 64;
	*bit = 1ULL << (page % 64);
	return tw_pages.lookup(&word);
}

static __always_inline void mark_tw_page(u64 timer)
{
	u64 bit;
	u64 *w = tw_page_word(timer, &bit);
	if (w && !(*w & bit)) /* written only when new: the words stay shared between CPUs */
		__sync_fetch_and_or(w, bit);
}

/* Could this timer be a timewait timer we follow?  False: it is not followed. */
static __always_inline bool maybe_timewait(u64 timer)
{
	u64 bit;
	u64 *w = tw_page_word(timer, &bit);
	return w && (*w & bit);
}

static __always_inline struct tw_cpu *this_cpu_tw(void)
{
	u32 zero = 0;
	return tw_cpu.lookup(&zero);
}

/* ---- Reused or killed ---------------------------------------------------
 *
 * A connect() that takes over a TIME_WAIT's 4-tuple (tcp_twsk_unique: a bound
 * port reconnected, or tcp_tw_reuse) enters SYN_SENT, then picks its port in
 * inet_hash_connect(), which finds the timewait socket and deschedules it:
 * timer_cancel(T) in the same task on the same CPU, microseconds later, the
 * timewait's remote end being the connecting socket's.  Any other cancel (a SYN
 * into a server-side TIME_WAIT, an RST, netns teardown) runs in softirq or in
 * another task.  So each CPU remembers its last SYN_SENT (task, time, remote
 * end), and a followed timewait cancelled within REUSE_WINDOW_NS of it, in that
 * task, towards that remote end, is marked reused.  Missed only if the task moved
 * to another CPU in between; user space's join (analysis/timewait.py) finds
 * those from the connection that reused the 4-tuple. */
#define REUSE_WINDOW_NS 5000000 /* SYN_SENT to the cancel: microseconds, or more in a full port range */

static __always_inline u16 dest_hash(const u8 *daddr, u16 dport)
{
	u32 h = dport;
#pragma unroll
	for (int i = 0; i < 16; i += 4)
		h = h * 31 + (daddr[i] | daddr[i + 1] << 8 | daddr[i + 2] << 16 | (u32)daddr[i + 3] << 24);
	return (u16)(h ^ h >> 16);
}

/* A socket of this task enters SYN_SENT towards daddr:dport (connect()). */
static __always_inline void note_connect(u16 family, u16 dport, const void *daddr, const void *daddr_v6, u64 now)
{
	struct tw_cpu *c = this_cpu_tw();
	if (!c)
		return;
	u8 addr[16] = {};
	if (family == AF_INET6)
		bpf_probe_read_kernel(addr, 16, daddr_v6);
	else
		bpf_probe_read_kernel(addr, 4, daddr);
	c->connect_task = bpf_get_current_pid_tgid();
	c->connect_ns = now;
	c->connect_dest = dest_hash(addr, dport);
}

/* Is a cancel now of a timewait towards `dest` a connect() reusing it? */
static __always_inline u16 in_connect(struct tw_cpu *c, u16 dest, u64 now)
{
	return c->connect_ns && now - c->connect_ns < REUSE_WINDOW_NS && c->connect_dest == dest &&
	       c->connect_task == bpf_get_current_pid_tgid();
}

/* How a cancelled timewait ended: reused, or killed (TW_CANCELLED). */
static __always_inline int cancelled_how(struct tw_state *t)
{
	return t->reused ? TW_REUSED : TW_CANCELLED;
}

#ifdef FIGURES
static __always_inline void add_timewait_end(struct tw_state *t, u64 end_ns, int how); /* (below, with the figures) */
#endif

/* A followed timewait ended: handed over (with FIGURES, counted, and handed over with
 * RECORDS only), and no longer followed.  The record is written in the ring buffer itself,
 * not built on the stack: the ->CLOSE that ends a killed timewait (claim_timewait) has its
 * life's record there already, and the two would not fit in BPF's 512 bytes. */
static __always_inline void end_timewait(u64 timer, struct tw_state *t, u64 end_ns, int how)
{
	/* An end before the start the entry holds is not this timewait's.  settle_cancel on
	 * one CPU reads a pending cancel's time; meanwhile another CPU ends that timewait (a
	 * new one armed in its memory: TW_REPLACED) and the new one's ->CLOSE stores it in the
	 * same entry.  Handed over, the old cancel would end the new timewait before its start,
	 * and the new one would no longer be followed to its own end.  Entries are read and
	 * changed without a lock (see tw_slots), so this is where the mix shows: dropped, counted. */
	if (end_ns < t->start_ns) {
		count(C_TW_STALE_END);
		return;
	}
#ifdef FIGURES
	add_timewait_end(t, end_ns, how);
#endif
#if !defined(FIGURES) || defined(RECORDS)
	struct tcpclose_event *r = events.ringbuf_reserve(sizeof(struct tcpclose_event));
	if (r) {
		__builtin_memset(r, 0, sizeof(*r));
		r->kind = EV_TW_END;
		r->ts_ns = end_ns;
		r->tw_timer = timer;
		r->tw_start_ns = t->start_ns;
		r->tw_rearm_ns = t->rearm_ns;
		r->tw_timeout = t->timeout;
		r->tw_end = how;
		events.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	} else {
		count(C_RINGBUF_DROPS);
	}
#endif
	forget_timewait(timer);
	count(C_TW_ENDED);
}

/* The timewait cancelled last on this CPU met something other than its own
 * expiry or re-arm: it was killed at its cancel. */
static __always_inline void settle_cancel(struct tw_cpu *c, u64 timer)
{
	u64 p = c->pending_kill;
	if (!p || p == timer)
		return;
	c->pending_kill = 0;
	struct tw_state *t = find_timewait(p);
	if (t && t->cancel_ns)
		end_timewait(p, t, t->cancel_ns, cancelled_how(t));
}
#endif /* TW_TIMER_FN */

/* At FIN_WAIT2/CLOSING->CLOSE: the timewait timer armed just before on this
 * CPU belongs to this life.  None armed: no timewait socket was made
 * (tcp_max_tw_buckets overflow, or a reset or timeout ended the life).
 *
 * A timer cancelled just before it was armed (armed_rearm) was taken as a
 * re-arm; a claim shows it was a new timewait in the memory of one killed at
 * that cancel (a re-arm is never followed by its socket's ->CLOSE: that socket
 * is long gone).  So the followed one ended at its cancel, with its re-arm
 * time as it was.  Telling them apart here saves a program on timer_init
 * (the new socket's timer_setup()), which would run for every kernel timer,
 * 9 times a connection.
 * Misread only if a FIN_WAIT2-substate re-arm is followed within
 * TW_LINK_WINDOW_NS on the same CPU by a FIN_WAIT2->CLOSE that made no
 * timewait (an overflow or a reset), or if the claiming ->CLOSE was skipped
 * (a recursion miss): then the killed one looks re-armed. */
static __always_inline void claim_timewait(struct tcpclose_event *e, u64 now)
{
#ifdef TW_TIMER_FN
	struct tw_cpu *c = this_cpu_tw();
	if (!c || !c->armed_timer)
		return;
	u64 timer = c->armed_timer;
	if (now - c->armed_ns < TW_LINK_WINDOW_NS) {
		struct tw_state *t = c->armed_rearm && c->undo_cancel_ns ? find_timewait(timer) : 0;
		if (t) {
			t->rearm_ns = c->undo_rearm_ns;
			t->reused = c->undo_reused;
			end_timewait(timer, t, c->undo_cancel_ns, cancelled_how(t));
		}
		e->tw_timer = timer;
		e->tw_start_ns = c->armed_ns;
		e->tw_timeout = c->armed_timeout;
	} else if (!c->armed_rearm) {
		count(C_TW_UNLINKED);
	}
	c->armed_timer = 0;
	c->armed_rearm = 0;
#endif
}

/* Follow the timewait socket of a life that was handed over (or, with FIGURES, counted
 * for `owner`, its key in figures: see add_figures). */
#ifdef FIGURES
static __always_inline u64 hold_port(struct tcpclose_event *e); /* (both below, with the figures) */
static __always_inline void unhold_port(u64 key);
#endif
static __always_inline void follow_timewait(struct tcpclose_event *e, u64 owner)
{
#ifdef TW_TIMER_FN
	u64 timer = e->tw_timer;
	if (!timer)
		return;
	struct tw_state t = {};
	t.timer = timer;
	t.start_ns = e->tw_start_ns;
	t.timeout = e->tw_timeout;
	t.dest = dest_hash(e->daddr, e->dport);
	t.owner = owner;
#ifdef FIGURES
	t.held = hold_port(e); /* before it is stored: its end, on another CPU, may come at once */
#endif
	if (store_timewait(&t) != 0) {
		count(C_TW_FULL);
#ifdef FIGURES
		unhold_port(t.held);
#endif
		return;
	}
	count(C_TW_LINKED);
#endif
}

/* ==== Aggregates (--aggregates) and figures (agent) =========================================== */

#if defined(AGGREGATES) || defined(FIGURES)
#define ESTABLISHED_STATES ((1 << TCP_ESTABLISHED) | (1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) | \
			    (1 << TCP_CLOSE_WAIT) | (1 << TCP_LAST_ACK) | (1 << TCP_CLOSING))

/* How a life ended: the rules of agent/analysis/rules.py, for lives that reached ->CLOSE. */
static __always_inline int close_kind(struct tcpclose_event *e)
{
	if (!(e->states & ESTABLISHED_STATES) && !((1 << e->last_state) & ESTABLISHED_STATES))
		return A_NEVER_ESTABLISHED;
	if (e->flags & FLAG_RST_RECEIVED)
		return A_RESET_REMOTE;
	switch (e->last_state) {
	case TCP_CLOSING:
		return A_SIMULTANEOUS;
	case TCP_FIN_WAIT2:
		return A_ACTIVE;
	case TCP_LAST_ACK:
		return A_PASSIVE;
	}
	if (e->flags & FLAG_MISSED_CLOSE) /* no ->CLOSE seen: not a reset we know of */
		return A_CLOSE_UNSEEN;
	return A_RESET_LOCAL;
}
#endif

#ifdef AGGREGATES
static __always_inline void aggregate(struct tcpclose_event *e)
{
	struct tcpclose_proc_key key = {};
	if (e->owner_src != OWNER_NONE) {
		key.pid = e->pid;
		__builtin_memcpy(key.comm, e->comm, COMM_LEN);
	}
	struct tcpclose_proc_counts zero = {};
	struct tcpclose_proc_counts *c = procs.lookup_or_try_init(&key, &zero);
	if (!c) {
		count(C_PROCS_FULL);
		return;
	}
	int kind = close_kind(e);
	__sync_fetch_and_add(&c->n[A_LIVES], 1);
	if (kind > 0 && kind < NR_AGGREGATES)
		__sync_fetch_and_add(&c->n[kind], 1);
	if (kind == A_ACTIVE || kind == A_SIMULTANEOUS)
		__sync_fetch_and_add(&c->n[A_TIMEWAIT], 1);
}
#endif

#ifdef FIGURES
#define MIX(h, v) (((h) ^ (u64)(v)) * 0x100000001B3ULL) /* FNV-style, wrapping modulo 2^64 */

/* The histogram bucket of a value in ns: how many bounds (in µs) it is above, one
 * comparison with a constant per bound (BOUNDS is a list X(bound) X(bound) ...). */
#define ABOVE_US(b) + (v_ > (b) * 1000ULL)
#define BUCKET(v_ns, BOUNDS) ({ u64 v_ = (v_ns); (u32)(0 BOUNDS(ABOVE_US)); })

/* The owner's entry in figures, made if new (NULL: the map is full; *key: its key).  The
 * scratch copy is written only when the entry is new: most lives end for an owner met before. */
static __always_inline struct tcpclose_figures *owner_figures(struct tcpclose_event *e, u64 *key)
{
	bool known = e->owner_src == OWNER_SYSCALL || e->owner_src == OWNER_LISTENER; /* rules.OWNER_CODES_KNOWN */
	u64 *comm = (u64 *)e->comm;
	u64 h = 0xcbf29ce484222325ULL;
	h = MIX(h, known ? e->pid : 0);
	h = MIX(h, known ? comm[0] : 0);
	h = MIX(h, known ? comm[1] : 0);
	h = MIX(h, known ? e->cgroup_id : 0);
	*key = h;
	struct tcpclose_figures *f = figures.lookup(key);
	if (f)
		return f;
	u32 zero = 0;
	struct tcpclose_figures *fresh = figures_new.lookup(&zero);
	if (!fresh)
		return 0;
	fresh->pid = known ? e->pid : 0;
	fresh->cgroup_id = known ? e->cgroup_id : 0;
	__builtin_memset(fresh->comm, 0, COMM_LEN);
	if (known)
		__builtin_memcpy(fresh->comm, e->comm, COMM_LEN);
	/* made only if still missing: a per-CPU entry made again would zero the other CPUs'
	 * counts (fresh's counts are never written: all 0) */
	figures.insert(key, fresh);
	f = figures.lookup(key);
	if (!f)
		count(C_FIGURES_FULL);
	return f;
}

/* A life that ended (kind: close_kind) to its owner's figures; returns its owner's key (0: not counted). */
static __always_inline u64 add_figures(struct tcpclose_event *e, int kind)
{
	u64 key;
	struct tcpclose_figures *f = owner_figures(e, &key);
	if (!f)
		return 0;
	f->n[A_LIVES]++;
	if (kind > 0 && kind < NR_AGGREGATES)
		f->n[kind]++;
	if (kind == A_ACTIVE || kind == A_SIMULTANEOUS) {
		f->n[A_TIMEWAIT]++;
		if (e->tw_timer)
			f->tw_followed++;
	}
	if (e->opened_ns && !(e->flags & FLAG_PARTIAL) && e->ts_ns >= e->opened_ns) { /* whole lives only */
		u64 d = e->ts_ns - e->opened_ns;
		u32 b = BUCKET(d, DURATION_BOUNDS_US);
		f->duration[b]++;
		f->duration_us += d / 1000;
	}
	return key;
}

/* Must user space see this life?  Only a close due a TIME_WAIT whose timer was not seen:
 * whether a reset followed it (no TIME_WAIT then) is told by the EV_RESET_SENT records
 * (metrics.figures counts the others as unlinked). */
static __always_inline bool handed_over(struct tcpclose_event *e, int kind)
{
#ifdef RECORDS
	return true;
#else
	return (kind == A_ACTIVE || kind == A_SIMULTANEOUS) && !e->tw_timer &&
	       !(e->flags & (FLAG_PARTIAL | FLAG_MISSED_CLOSE));
#endif
}

/* A client's timewait (its life connect()ed) holds its port towards that destination:
 * +1 there; returns the destination's key in held (0: not a client's, or not counted). */
static __always_inline u64 hold_port(struct tcpclose_event *e)
{
	if (!(e->states & (1 << TCP_SYN_SENT)))
		return 0;
	u64 h = 0xcbf29ce484222325ULL;
	u64 *s = (u64 *)e->saddr, *d = (u64 *)e->daddr;
	h = MIX(h, e->family);
	h = MIX(h, s[0]);
	h = MIX(h, s[1]);
	h = MIX(h, d[0]);
	h = MIX(h, d[1]);
	h = MIX(h, e->dport);
	struct tcpclose_held *dest = held.lookup(&h);
	if (!dest) {
		u32 zero = 0;
		struct tcpclose_held *fresh = held_new.lookup(&zero);
		if (!fresh)
			return 0;
		__builtin_memcpy(fresh->saddr, e->saddr, 16);
		__builtin_memcpy(fresh->daddr, e->daddr, 16);
		fresh->dport = e->dport;
		fresh->family = e->family; /* (its n stays 0) */
		held.insert(&h, fresh); /* (only if still missing, as in owner_figures) */
		dest = held.lookup(&h);
		if (!dest) {
			count(C_FIGURES_FULL);
			return 0;
		}
	}
	dest->n++;
	return h;
}

static __always_inline void unhold_port(u64 key)
{
	struct tcpclose_held *dest = key ? held.lookup(&key) : 0;
	if (dest)
		dest->n--;
}

#ifdef TW_TIMER_FN
/* A followed timewait ended: its reason and lifetime to its owner's figures, its port freed. */
static __always_inline void add_timewait_end(struct tw_state *t, u64 end_ns, int how) /* (end_ns >= its start) */
{
	unhold_port(t->held);
	if (!t->owner)
		return;
	struct tcpclose_figures *f = figures.lookup(&t->owner);
	if (!f) {
		count(C_FIGURES_FULL);
		return;
	}
	if (how > 0 && how < NR_TW_ENDS)
		f->tw_end[how]++;
	u64 life = end_ns - t->start_ns;
	u32 b = BUCKET(life, TW_BOUNDS_US);
	f->tw_life[b]++;
	f->tw_life_us += life / 1000;
}
#endif /* TW_TIMER_FN */
#endif /* FIGURES */

/* ==== Transitions (--transitions) =========================================================== */

/* Hand over one transition of the life in e (its owner and addresses as known
 * after the transition), unless the owner filters say no. */
static __always_inline void emit_transition(struct tcpclose_event *e, int old, int new, u64 now)
{
#ifdef TRANSITIONS
	if (owner_filtered_out(e))
		return;
	count(C_TRANSITIONS);
	struct tcpclose_transition t = {};
	t.ts_ns = now;
	t.skaddr = e->skaddr;
	t.pid = e->pid;
	t.task_pid = bpf_get_current_pid_tgid() >> 32;
	__builtin_memcpy(t.comm, e->comm, COMM_LEN);
	__builtin_memcpy(t.saddr, e->saddr, 16);
	__builtin_memcpy(t.daddr, e->daddr, 16);
	t.sport = e->sport;
	t.dport = e->dport;
	t.family = e->family;
	t.oldstate = old;
	t.newstate = new;
	t.owner_src = e->owner_src;
	if (transitions.ringbuf_output(&t, sizeof(t), BPF_RB_NO_WAKEUP) != 0)
		count(C_TRANSITION_DROPS);
#endif
}

/* ==== A life's transitions ================================================================== */

/* Hand over a life that has ended, unless the owner filters say no; with
 * --aggregates, count it for its owner instead. */
static __always_inline void end_life(struct tcpclose_event *e)
{
	e->kind = EV_LIFE;
	if (owner_filtered_out(e)) {
		count(C_LIVES_FILTERED);
		return;
	}
#if defined(AGGREGATES)
	aggregate(e);
#elif defined(FIGURES)
	int kind = close_kind(e);
	u64 owner = add_figures(e, kind);
	if (handed_over(e, kind))
		emit(e);
	follow_timewait(e, owner);
#else
	emit(e);
	follow_timewait(e, 0);
#endif
}

/* One transition of a life: what it tells about the socket and its owner.
 * Always inlined, and called separately for a map entry and for a record on
 * the stack, so that the verifier sees one pointer type at each call. */
static __always_inline void follow(struct tcpclose_event *e, int old, int new, u64 now,
				   u16 family, u16 sport, const void *saddr, const void *saddr_v6)
{
	/* connect() enters SYN_SENT before it picks the ephemeral port: take the
	 * local end again until the port is known. */
	if (!e->sport) {
		e->sport = sport;
		if (family == AF_INET6)
			bpf_probe_read_kernel(e->saddr, 16, saddr_v6);
		else
			bpf_probe_read_kernel(e->saddr, 4, saddr);
	}
	e->states |= 1 << new;
	e->ts_ns = now;
	if (current_is_owner(old, new))
		take_owner(e);
	switch (new) {
	case TCP_ESTABLISHED:
		if (!e->estab_ns)
			e->estab_ns = now;
		break;
	case TCP_CLOSE_WAIT:
		e->close_wait_ns = now;
		break;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		if (!e->fin_ns)
			e->fin_ns = now;
		break;
	}
	if (new != TCP_CLOSE) {
		e->last_state = new;
		return;
	}
	/* ->CLOSE ends the life.  FIN_WAIT2->CLOSE and CLOSING->CLOSE are the
	 * moments the kernel hands the connection to a timewait socket
	 * (TIME_WAIT itself never appears on this tracepoint). */
	e->last_state = old;
	if (old == TCP_FIN_WAIT2 || old == TCP_CLOSING)
		claim_timewait(e, now);
	end_life(e);
}

/* ==== Entry points ========================================================================== */

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP) /* the tracepoint reports SCTP and MPTCP too */
		return 0;
	u64 sk = (u64)args->skaddr;
	int old = args->oldstate, new = args->newstate;

	struct listener_key local;
	if (new == TCP_LISTEN || old == TCP_LISTEN && new == TCP_CLOSE) {
		listener_key(&local, args->family, args->sport, args->saddr, args->saddr_v6);
		track_listener(sk, &local, old, new);
#ifdef TRANSITIONS
		/* listen() and a listener's close() are its owner's own syscalls */
		if (!filtered_out(args->family, args->sport, args->dport)) {
			struct tcpclose_event l = {};
			take_owner(&l);
			l.skaddr = sk;
			l.family = args->family;
			l.sport = args->sport;
			if (args->family == AF_INET6)
				bpf_probe_read_kernel(l.saddr, 16, args->saddr_v6);
			else
				bpf_probe_read_kernel(l.saddr, 4, args->saddr);
			emit_transition(&l, old, new, bpf_ktime_get_ns());
		}
#endif
		return 0;
	}
#ifdef TW_TIMER_FN
	if (new == TCP_SYN_SENT) /* before the filters: the port is not picked yet */
		note_connect(args->family, args->dport, args->daddr, args->daddr_v6, bpf_ktime_get_ns());
#endif
	if (filtered_out(args->family, args->sport, args->dport))
		return 0;

	struct tcpclose_event *e = find_life(sk);
#if defined(AGGREGATES) || defined(FIGURES) && !defined(RECORDS)
	/* The counts need no times; the lives still open at the end need when they began and
	 * when they entered CLOSE_WAIT (its age), so the clock is read for those only (a read
	 * takes tens of ns on a paravirtual clock: half the transitions are spared it).  The
	 * figures need the ->CLOSE too: a connection's duration, and the timewait it claims. */
	u64 now = !e || old == TCP_CLOSE || old == TCP_LISTEN || new == TCP_CLOSE_WAIT || CLOCK_AT_CLOSE && new == TCP_CLOSE
		  ? bpf_ktime_get_ns() : 0;
#else
	u64 now = bpf_ktime_get_ns();
#endif
	if (e && (old == TCP_CLOSE || old == TCP_LISTEN)) {
		/* A new life on an address we still follow: the previous life's
		 * ->CLOSE never reached us.  The kernel skips a tracepoint program
		 * that would nest on its CPU (a softirq interrupting it runs the
		 * same tracepoint; counted in the program's recursion_misses).
		 * Never join two lives: hand the old one over as it was last seen. */
		e->flags |= FLAG_MISSED_CLOSE;
		end_life(e);
		forget_life(sk);
		count(C_LIVES_ENDED);
		count(C_MISSED_CLOSE);
		e = NULL;
	}
	if (!e) {
		struct tcpclose_event fresh = {};
		if (old == TCP_LISTEN)
			listener_key(&local, args->family, args->sport, args->saddr, args->saddr_v6);
		start_life(&fresh, sk, now, &local, old, new);
		fresh.family = args->family;
		fresh.dport = args->dport;
		if (args->family == AF_INET6)
			bpf_probe_read_kernel(fresh.daddr, 16, args->daddr_v6);
		else
			bpf_probe_read_kernel(fresh.daddr, 4, args->daddr);
		/* the first transition is followed on the stack, then stored: one map
		 * operation, not an insert and a lookup */
		follow(&fresh, old, new, now, args->family, args->sport, args->saddr, args->saddr_v6);
		emit_transition(&fresh, old, new, now);
		if (new == TCP_CLOSE) /* a one-transition life (it began before tracing): handed over */
			return 0;
		if (store_life(sk, &fresh) != 0)
			count(C_SOCKS_FULL);
		else
			count(C_LIVES_STARTED);
		return 0;
	}
	follow(e, old, new, now, args->family, args->sport, args->saddr, args->saddr_v6);
	emit_transition(e, old, new, now);
	if (new == TCP_CLOSE) {
		forget_life(sk);
		count(C_LIVES_ENDED);
	}
	return 0;
}

/* A reset from the peer: tcp_reset() fires this before it moves the socket
 * to CLOSE, so the life is still followed. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	u64 sk = (u64)args->skaddr;
	struct tcpclose_event *e = find_life(sk);
	if (e)
		e->flags |= FLAG_RST_RECEIVED;
	return 0;
}

/* A reset we send.  Aborting a connection (SO_LINGER 0, unread data at close,
 * tcp_disconnect) moves the socket to CLOSE *before* sending the RST, so the
 * life has usually been handed over already: then a small EV_RESET_SENT
 * record follows it, and user space joins it to the life that just ended on
 * the same socket address. */
TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
	u64 sk = (u64)args->skaddr;
	if (!sk)
		return 0; /* a reply to a segment that matched no socket */
	struct tcpclose_event *e = find_life(sk);
	if (e) {
		e->flags |= FLAG_RST_SENT;
		return 0;
	}
	if (args->state != TCP_CLOSE)
		return 0; /* a timewait socket answering, or a socket we do not follow */
#ifdef AGGREGATES
	return 0; /* no records: the close was counted as a local reset or a close already */
#endif
	struct tcpclose_event r = {};
	r.kind = EV_RESET_SENT;
	r.skaddr = sk;
	r.ts_ns = bpf_ktime_get_ns();
	emit(&r);
	return 0;
}

#ifdef TW_TIMER_FN
TRACEPOINT_PROBE(timer, timer_start)
{
	if ((u64)args->function != TW_TIMER_FN) /* every kernel timer passes here */
		return 0;
	u64 timer = (u64)args->timer;
	u64 now = bpf_ktime_get_ns();
	struct tw_cpu *c = this_cpu_tw();
	if (!c)
		return 0;
	mark_tw_page(timer);
	struct tw_state *t = find_timewait(timer);
	u32 rearm = c->last_cancel == timer;
	if (rearm) {
		/* Cancelled just before on this CPU: a re-arm, or T's timewait was
		 * killed at that cancel and T is a new one's.  Taken as a re-arm
		 * here; claim_timewait() undoes that if a ->CLOSE claims T. */
		c->last_cancel = 0;
		c->pending_kill = 0; /* it was T, or nothing: a cancel settles the one before */
		c->undo_rearm_ns = t ? t->rearm_ns : 0;
		c->undo_cancel_ns = t ? t->cancel_ns : 0;
		c->undo_reused = t ? t->reused : 0;
		if (t) {
			t->rearm_ns = now;
			t->cancel_ns = 0;
			t->reused = 0;
		}
	} else {
		settle_cancel(c, timer);
		if (t) /* the memory of a timewait we follow armed anew: that one's end went unseen */
			end_timewait(timer, t, t->cancel_ns ? t->cancel_ns : now,
				     t->cancel_ns ? cancelled_how(t) : TW_REPLACED);
	}
	if (c->armed_timer && !c->armed_rearm)
		count(C_TW_UNLINKED);
	c->armed_timer = timer;
	c->armed_ns = now;
	c->armed_timeout = args->expires - args->now;
	c->armed_rearm = rearm;
	return 0;
}

/* Raw, like timer_cancel: it runs in the timer softirq, which interrupts classic
 * programs, and as a classic one it was skipped thousands of times a minute at
 * full churn, each skip a TIME_WAIT expiry taken for a kill.  Its arguments are
 * the timer's address and the wheel's clock; the callback would have to be read
 * from struct timer_list, so a timewait timer is told by being followed
 * instead (tw sockets come from a slab cache of their own, so a followed
 * address holds a timewait timer until that entry ends).  Any other timer's expiry is still
 * "this CPU's next timer event" for a pending kill. */
RAW_TRACEPOINT_PROBE(timer_expire_entry)
{
	u64 timer = ctx->args[0]; /* struct timer_list * */
	struct tw_cpu *c = this_cpu_tw();
	if (c) {
		if (c->last_cancel == timer)
			c->last_cancel = 0;
		if (c->pending_kill == timer)
			c->pending_kill = 0;
		else if (c->pending_kill)
			settle_cancel(c, timer);
	}
	if (!maybe_timewait(timer))
		return 0;
	struct tw_state *t = find_timewait(timer);
	if (t)
		end_timewait(timer, t, bpf_ktime_get_ns(), TW_EXPIRED);
	return 0;
}

RAW_TRACEPOINT_PROBE(timer_cancel)
{
	u64 timer = ctx->args[0]; /* struct timer_list * */
	struct tw_cpu *c = this_cpu_tw();
	if (!c)
		return 0;
	settle_cancel(c, timer);
	c->last_cancel = timer;
	if (!maybe_timewait(timer))
		return 0;
	struct tw_state *t = find_timewait(timer);
	if (t) {
		t->cancel_ns = bpf_ktime_get_ns();
		t->reused = in_connect(c, t->dest, t->cancel_ns);
		c->pending_kill = timer;
	}
	return 0;
}
#endif /* TW_TIMER_FN */
