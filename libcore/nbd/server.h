// NbdServer: serves one BlockDevice as one NBD export, on any number of
// Unix-socket and TCP listeners.
//
// Threads.  Run() accepts connections on the calling thread.  Each
// connection gets a reader thread that does the handshake and then parses
// requests (one recv() takes in every request the client has pipelined, up
// to 256 KiB; larger payloads are received straight into their buffer);
// requests run on a worker pool shared by all connections (`threads`
// workers), handed over all at once for what one recv() took in, and are
// answered in completion order, not request order, as the protocol
// allows.  A read or write that is its connection's only request in
// flight runs on the reader instead (a hand-over costs a wake-up and two
// context switches), on at most as many connections at a time as there
// are CPUs (at least 2); meanwhile a standby thread of the connection,
// woken by a one-shot epoll watch, reads whatever the client sends behind
// it and hands that to the pool, so a slow lone request holds nothing up.
// Payload buffers come from nbd::BufferPool.  Replies of one connection are
// written by whichever worker holds that connection's send role: a worker
// that finds another one writing leaves its reply in the queue and returns
// to the pool, so a slow client occupies at most one worker at a time.
//
// Bounds.  A connection may have at most `max_inflight_bytes` of request
// and reply payload (plus a small charge per request) in flight; its reader
// stops reading the socket until replies drain.  A write longer than the
// advertised 32 MiB maximum ends the connection (its payload cannot be
// skipped safely); every other malformed request is answered with an NBD
// error, and a malformed handshake or request header ends that one
// connection.  A client that leaves replies unread for 60 s is disconnected.
//
// Durability.  A reply is sent only after the device call returns, so a
// FLUSH, which calls BlockDevice::Flush(), covers every write whose reply
// the client has seen; FUA maps to Write(fua=true) and to a Flush() after a
// trim.  The device is shared by all connections, so the export offers
// CAN_MULTI_CONN.
//
// Thread-safety: Listen() and Addresses() must not race with each other or
// with Run().  Shutdown() and Counters() may be called from any thread at
// any time; Shutdown() is also async-signal-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/status.h"

namespace insitu {

// A listening socket made from a spec:
//   unix:PATH        a Unix socket, created mode 0600; an existing socket
//                    file is replaced only when nobody accepts on it
//   tcp:HOST:PORT    TCP on HOST (an IPv4/IPv6 literal or a name; IPv6
//                    literals in brackets, e.g. tcp:[::1]:10809)
//   tcp::PORT, tcp:PORT   TCP on 127.0.0.1
// PORT 0 picks a free port; address() reports the one bound.
// The destructor closes the socket and removes the socket file it created
// (unless something else has replaced it since).  Not thread-safe.
class ListenSocket {
 public:
  static Status Open(const std::string& spec, std::unique_ptr<ListenSocket>* out);
  ~ListenSocket();
  ListenSocket(const ListenSocket&) = delete;
  ListenSocket& operator=(const ListenSocket&) = delete;

  // Non-blocking, close-on-exec.
  int fd() const { return fd_; }
  // The bound address in spec form, e.g. "tcp:127.0.0.1:40123".
  const std::string& address() const { return address_; }
  bool is_tcp() const { return unix_path_.empty(); }

 private:
  ListenSocket() = default;
  int fd_ = -1;
  std::string address_;
  std::string unix_path_;
  uint64_t unix_dev_ = 0;
  uint64_t unix_ino_ = 0;
};

struct NbdServerOptions {
  // The export's name.  Clients asking for "" (the default export) get it
  // too; any other name is refused.
  std::string export_name;
  std::string description;                    // shown by `nbdinfo` and in NBD_OPT_LIST
  bool read_only = false;                     // advertise READ_ONLY; writes get EPERM
  unsigned threads = 0;                       // worker threads; 0 = DefaultWorkerThreads(false)
  uint64_t max_inflight_bytes = 64ull << 20;  // per connection
  unsigned max_connections = 1024;            // more are closed at once
  // How long a reader whose client sends one request at a time polls the
  // socket for the next one before it sleeps, in microseconds (0: never).
  // Waking a sleeping thread on an idle CPU costs a virtual machine more
  // than the poll (docs/design.md, "A reader polls for a lone client").
  unsigned poll_us = 32;
  // Receives one line per noteworthy event (a client broke the protocol, a
  // device call failed).  Null: silent.  Called from any server thread.
  std::function<void(const std::string&)> log;
};

struct NbdServerCounters {
  uint64_t connections = 0;  // open now
  uint64_t connections_total = 0;
  // connections whose reader runs their lone reads and writes itself, each
  // with a standby thread (at most max(2, usable CPUs); kept until they
  // close)
  uint64_t inline_readers = 0;
  uint64_t requests_in_flight = 0;
  uint64_t requests_total = 0;  // requests received, including rejected ones
  // hand-overs of requests to the worker pool, each of every request one
  // recv() took in (requests_total / pool_handoffs: the batch size)
  uint64_t pool_handoffs = 0;
  // requests a reader found while polling for them (NbdServerOptions::poll_us)
  uint64_t poll_hits = 0;
  uint64_t bytes_read = 0;     // bytes clients read (successful NBD_CMD_READ)
  uint64_t bytes_written = 0;  // bytes clients wrote (successful NBD_CMD_WRITE)
};

// The CPUs the process may run on (its affinity mask), at least 1.
unsigned UsableCpus();

// Worker threads for a device whose I/O mostly does not block (page cache)
// or mostly does (direct I/O): a few per CPU the process may run on, or
// enough to keep a device queue busy.
unsigned DefaultWorkerThreads(bool blocking_device);

class NbdServer {
 public:
  // The largest read or write payload; advertised as the maximum block size.
  static constexpr uint32_t kMaxPayload = 32u << 20;

  // `dev` must outlive the server.
  NbdServer(BlockDevice* dev, NbdServerOptions opts);
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Adds a listener (see ListenSocket for the spec).  Call before Run().
  Status Listen(const std::string& spec);
  // The bound addresses, in the order Listen() was called.
  std::vector<std::string> Addresses() const;

  // Serves until Shutdown(), then closes the listeners, stops reading new
  // requests, completes and answers every request already read, closes the
  // connections and returns.  Call at most once.
  Status Run();
  void Shutdown();

  NbdServerCounters Counters() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace insitu
