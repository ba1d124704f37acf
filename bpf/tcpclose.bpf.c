/* tcpclose: follow every TCP socket life and hand user space one record per life.
 *
 * Compiled by bcc at start-up (agent/loader.py).  It reads tracepoint
 * arguments only, never kernel struct fields: the headers bcc compiles
 * against may belong to another kernel, so struct offsets may be wrong,
 * while tracepoint formats are read from the running kernel's tracefs.
 *
 * Filters arrive as -D defines (single values) and the port_filter map (lists):
 *   FILTER_FAMILY  AF_INET or AF_INET6       FILTER_LPORTS/FILTER_RPORTS  use port_filter
 *   FILTER_TGID    owner's tgid              FILTER_COMM  owner's comm, a string literal
 * and sizes as MAX_SOCKS, MAX_LISTENERS, RINGBUF_PAGES.
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

/* socks: the life of every TCP socket being followed.
 *   key    socket address (skaddr)
 *   value  the record that will be handed over, filled in as the life goes on
 *   filled at the first transition seen for a socket address
 *   cleared at its ->CLOSE, after the record is copied to the ring buffer
 *   a missed ->CLOSE: the LRU map evicts the oldest entries when full; user space
 *   counts evictions as C_LIVES_STARTED - C_LIVES_ENDED - entries left at the end.
 */
BPF_TABLE("lru_hash", u64, struct tcpclose_event, socks, MAX_SOCKS);

/* listeners: the owner of each listening socket, for its children.
 *   key    local port; value  the listener's owner and its skaddr
 *   filled at CLOSE->LISTEN (the owner's listen()), cleared at LISTEN->CLOSE
 *   of that same socket.  A child socket appears as LISTEN->SYN_RECV in softirq,
 *   with no trustworthy task, so it starts with its listener's owner.
 */
struct listener {
	u64 skaddr;
	u64 cgroup_id;
	u32 pid;
	u32 tid;
	char comm[COMM_LEN];
};
BPF_HASH(listeners, u16, struct listener, MAX_LISTENERS);

/* port_filter: bit 0 = local port listed (-L), bit 1 = remote port listed (-D). */
BPF_ARRAY(port_filter, u8, 65536);

BPF_PERCPU_ARRAY(counters, u64, NR_COUNTERS);

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

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
	char want[COMM_LEN] = FILTER_COMM;
#pragma unroll
	for (int i = 0; i < COMM_LEN; i++) {
		if (e->comm[i] != want[i])
			return true;
		if (want[i] == 0)
			break;
	}
#endif
	return false;
}

static __always_inline void take_owner(struct tcpclose_event *e)
{
	u64 id = bpf_get_current_pid_tgid();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->owner_src = OWNER_SYSCALL;
}

/* Listening sockets are followed in the listeners map only: they are not
 * connections, and their children need their owner. */
static __always_inline void track_listener(u64 sk, u16 port, int old, int new)
{
	if (new == TCP_LISTEN) {
		struct listener l = {};
		u64 id = bpf_get_current_pid_tgid();
		l.skaddr = sk;
		l.pid = id >> 32;
		l.tid = (u32)id;
		l.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(l.comm, sizeof(l.comm));
		listeners.update(&port, &l);
	} else {
		struct listener *l = listeners.lookup(&port);
		if (l && l->skaddr == sk)
			listeners.delete(&port);
	}
}

/* The owner a new life starts with; the addresses are filled in by the caller. */
static __always_inline void start_life(struct tcpclose_event *e, u64 sk, u64 now, u16 port,
				       int old, int new)
{
	e->skaddr = sk;
	e->opened_ns = now;
	e->kind = EV_OPEN;
	if (old == TCP_LISTEN && new == TCP_SYN_RECV) {
		struct listener *l = listeners.lookup(&port);
		if (l) {
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

/* Hand over a life that has ended, unless the owner filters say no. */
static __always_inline void end_life(struct tcpclose_event *e)
{
	e->kind = EV_LIFE;
	if (owner_filtered_out(e))
		count(C_LIVES_FILTERED);
	else
		emit(e);
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
	end_life(e);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP) /* the tracepoint reports SCTP and MPTCP too */
		return 0;
	u64 sk = (u64)args->skaddr;
	int old = args->oldstate, new = args->newstate;

	if (new == TCP_LISTEN || old == TCP_LISTEN && new == TCP_CLOSE) {
		track_listener(sk, args->sport, old, new);
		return 0;
	}
	if (filtered_out(args->family, args->sport, args->dport))
		return 0;

	u64 now = bpf_ktime_get_ns();
	struct tcpclose_event *e = socks.lookup(&sk);
	if (e && (old == TCP_CLOSE || old == TCP_LISTEN)) {
		/* A new life on an address we still follow: the previous life's
		 * ->CLOSE never reached us.  The kernel skips a tracepoint program
		 * that would nest on its CPU (a softirq interrupting it runs the
		 * same tracepoint; counted in the program's recursion_misses).
		 * Never join two lives: hand the old one over as it was last seen. */
		e->flags |= FLAG_MISSED_CLOSE;
		end_life(e);
		socks.delete(&sk);
		count(C_LIVES_ENDED);
		count(C_MISSED_CLOSE);
		e = NULL;
	}
	if (!e) {
		struct tcpclose_event fresh = {};
		start_life(&fresh, sk, now, args->sport, old, new);
		fresh.family = args->family;
		fresh.dport = args->dport;
		if (args->family == AF_INET6)
			bpf_probe_read_kernel(fresh.daddr, 16, args->daddr_v6);
		else
			bpf_probe_read_kernel(fresh.daddr, 4, args->daddr);
		if (new == TCP_CLOSE) {
			/* a one-transition life (it began before tracing): hand it over at once */
			follow(&fresh, old, new, now, args->family, args->sport, args->saddr, args->saddr_v6);
			return 0;
		}
		if (socks.insert(&sk, &fresh) != 0) {
			count(C_SOCKS_FULL);
			return 0;
		}
		count(C_LIVES_STARTED);
		e = socks.lookup(&sk);
		if (!e)
			return 0;
	}
	follow(e, old, new, now, args->family, args->sport, args->saddr, args->saddr_v6);
	if (new == TCP_CLOSE) {
		socks.delete(&sk);
		count(C_LIVES_ENDED);
	}
	return 0;
}

/* A reset from the peer: tcp_reset() fires this before it moves the socket
 * to CLOSE, so the life is still in socks. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	u64 sk = (u64)args->skaddr;
	struct tcpclose_event *e = socks.lookup(&sk);
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
	struct tcpclose_event *e = socks.lookup(&sk);
	if (e) {
		e->flags |= FLAG_RST_SENT;
		return 0;
	}
	if (args->state != TCP_CLOSE)
		return 0; /* a timewait socket answering, or a socket we do not follow */
	struct tcpclose_event r = {};
	r.kind = EV_RESET_SENT;
	r.skaddr = sk;
	r.ts_ns = bpf_ktime_get_ns();
	emit(&r);
	return 0;
}
