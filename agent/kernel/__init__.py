"""The kernel side: the only package that imports bcc.

  preflight  what must hold before tracing (root, tracefs, tracepoints, headers, timer symbol)
  probe      compiles and attaches bpf/tcpclose.bpf.c, reads its rings and maps
  ringbuf    a BPF ring buffer read straight from its memory map, a batch at a time
  mapbatch   a whole BPF map read in a few syscalls
  procfs     what the kernel says about itself in /proc: HZ, TcpExt counters, sysctls
  netns      network namespaces: their ids, and running a reader inside one
  diag       sock_diag (what ss reads) and /proc/PID/fd: the sockets there now and who holds them
"""
