#include "libcore/nbd/server.h"

#include <arpa/inet.h>
#include <limits.h>
#include <linux/futex.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "libcore/nbd/buffer_pool.h"
#include "libcore/nbd/protocol.h"

namespace insitu {
namespace {

// Option data beyond this is skipped and answered NBD_REP_ERR_TOO_BIG: the
// largest legitimate option (a meta-context query list) is far smaller.
constexpr uint32_t kMaxOptionLength = 64 << 10;
// Charged to every request on top of its payload, so that requests without
// payload (flush, trim) are bounded in number too.
constexpr uint64_t kRequestCharge = 4096;
// One block-status reply looks at most this far and sends at most this many
// descriptors; the protocol lets a server answer a prefix, and clients ask
// again from where the answer stopped.
constexpr uint32_t kMaxBlockStatusQuery = 1u << 30;
constexpr size_t kMaxBlockStatusDescriptors = 1 << 16;
constexpr uint64_t kBlockStatusCharge = 8 * kMaxBlockStatusDescriptors + 64;
constexpr uint32_t kAllocationContextId = 1;
constexpr int kSendTimeoutSeconds = 60;

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

using nbd::DataBuffer;

DataBuffer AllocateData(size_t len) { return nbd::BufferPool::Shared().Take(len); }

std::string ErrnoText(int err) { return std::strerror(err); }

// ---- listen specs --------------------------------------------------------

Status ParsePort(std::string_view text, std::string* port) {
  if (text.empty() || text.size() > 5 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(std::string(text)) > 65535) {
    return Status::InvalidArgument("bad TCP port '" + std::string(text) + "' (expected 0..65535)");
  }
  *port = std::string(text);
  return Status::OK();
}

// Splits the part after "tcp:" into host and port; an empty host means
// loopback, so that nothing is exposed to the network unless asked for.
Status ParseTcpSpec(std::string_view rest, std::string* host, std::string* port) {
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return Status::InvalidArgument("expected tcp:[IPV6]:PORT");
    }
    *host = std::string(rest.substr(1, close - 1));
    port_text = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      host->clear();
      port_text = rest;
    } else {
      *host = std::string(rest.substr(0, colon));
      port_text = rest.substr(colon + 1);
    }
  }
  if (host->empty()) *host = "127.0.0.1";
  return ParsePort(port_text, port);
}

std::string FormatSockaddr(const sockaddr* sa) {
  char text[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "unix";
}

Status MakeUnixAddress(const std::string& path, sockaddr_un* addr) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) {
    return Status::InvalidArgument("Unix socket path '" + path + "' is empty or longer than " +
                                   std::to_string(sizeof(addr->sun_path) - 1) + " bytes");
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::OK();
}

// Removes a socket file left behind by a server that is gone.  A file that
// is not a socket, or a socket someone still accepts on, is left alone.
Status RemoveStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::OK();
    return Status::FromErrno(errno, "checking " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::InvalidArgument(path +
                                   " exists and is not a socket; remove it or choose another path");
  }
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (probe.get() < 0) return Status::FromErrno(errno, "creating a socket");
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    return Status::Busy("another server is already listening on " + path);
  }
  if (errno != ECONNREFUSED) return Status::FromErrno(errno, "probing " + path);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "removing the stale socket " + path);
  }
  return Status::OK();
}

}  // namespace

// ---- ListenSocket --------------------------------------------------------

Status ListenSocket::Open(const std::string& spec, std::unique_ptr<ListenSocket>* out) {
  std::unique_ptr<ListenSocket> ls(new ListenSocket());
  if (spec.starts_with("unix:")) {
    const std::string path = spec.substr(5);
    sockaddr_un addr;
    INSITU_RETURN_IF_ERROR(MakeUnixAddress(path, &addr));
    INSITU_RETURN_IF_ERROR(RemoveStaleSocket(path, addr));
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) return Status::FromErrno(errno, "creating a socket");
    // The mode set on the unbound socket is the one bind() gives the file on
    // Linux, so there is no moment when others could connect; the chmod
    // after bind() makes 0600 certain wherever that does not hold.
    if (::fchmod(fd.get(), 0600) != 0) return Status::FromErrno(errno, "fchmod on a socket");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return Status::FromErrno(errno, "binding " + spec);
    }
    struct stat st;
    if (::chmod(path.c_str(), 0600) != 0 || ::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      ::unlink(path.c_str());
      return Status::FromErrno(err, "setting the mode of " + path);
    }
    ls->unix_path_ = path;
    ls->unix_dev_ = st.st_dev;
    ls->unix_ino_ = st.st_ino;
    if (::listen(fd.get(), SOMAXCONN) != 0) return Status::FromErrno(errno, "listening on " + spec);
    ls->fd_ = fd.Release();
    ls->address_ = "unix:" + path;
    *out = std::move(ls);
    return Status::OK();
  }
  if (!spec.starts_with("tcp:")) {
    return Status::InvalidArgument("bad listen address '" + spec +
                                   "' (expected unix:PATH or tcp:HOST:PORT)");
  }
  std::string host, port;
  INSITU_RETURN_IF_ERROR(ParseTcpSpec(std::string_view(spec).substr(4), &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) {
    return Status::InvalidArgument("cannot resolve '" + host + "': " + ::gai_strerror(gai));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(res, &::freeaddrinfo);
  Status last = Status::InvalidArgument("no address found for '" + host + "'");
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (fd.get() < 0) {
      last = Status::FromErrno(errno, "creating a socket");
      continue;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6)
      ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
      last = Status::FromErrno(errno, "listening on " + spec);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      return Status::FromErrno(errno, "getsockname");
    }
    ls->address_ = "tcp:" + FormatSockaddr(reinterpret_cast<const sockaddr*>(&bound));
    ls->fd_ = fd.Release();
    *out = std::move(ls);
    return Status::OK();
  }
  return last;
}

ListenSocket::~ListenSocket() {
  if (fd_ >= 0) ::close(fd_);
  struct stat st;
  if (!unix_path_.empty() && ::stat(unix_path_.c_str(), &st) == 0 && st.st_dev == unix_dev_ &&
      st.st_ino == unix_ino_) {
    ::unlink(unix_path_.c_str());
  }
}

// ---- the server ----------------------------------------------------------

namespace {

class Connection;

// One request on its way to a worker.
struct Job {
  std::shared_ptr<Connection> conn;
  nbd::Request req;
  DataBuffer data;  // the payload of a write
  uint64_t charge = 0;
};

// One reply, ready to be written: the header (and any small payload) and,
// for a read, the data buffer itself, so read data is never copied.  The
// fixed-size headers of the common replies live inline, so a reply costs
// no allocation; error and block-status chunks, of any length, in
// long_head.
struct Reply {
  Reply() = default;
  template <size_t N>
  Reply(const std::array<uint8_t, N>& head, DataBuffer d, size_t len)
      : data(std::move(d)), data_len(len) {
    static_assert(N <= nbd::kOffsetDataHeaderSize);
    std::copy(head.begin(), head.end(), short_head.begin());
    short_len = N;
  }
  explicit Reply(std::vector<uint8_t> head) : long_head(std::move(head)) {}

  const uint8_t* head() const { return short_len > 0 ? short_head.data() : long_head.data(); }
  size_t head_size() const { return short_len > 0 ? short_len : long_head.size(); }

  std::array<uint8_t, nbd::kOffsetDataHeaderSize> short_head{};
  size_t short_len = 0;
  std::vector<uint8_t> long_head;
  DataBuffer data;
  size_t data_len = 0;
  uint64_t charge = 0;  // released once the reply is on the wire
};

}  // namespace

class NbdServer::Impl {
 public:
  Impl(BlockDevice* dev, NbdServerOptions opts);

  void Log(const std::string& line) const {
    if (opts.log) opts.log(line);
  }
  // Queues every job of `batch` (emptying it), then wakes a worker for
  // each one no worker has taken yet.  Returns whether jobs are still
  // queued.
  bool Submit(std::vector<Job>* batch);
  struct IdleWorker;
  void WorkerLoop(IdleWorker* self);
  Status StartWorkers();
  void StopWorkers();
  void AcceptOne(int listen_fd,
                 std::list<std::pair<std::shared_ptr<Connection>, std::thread>>* conns);
  void ReapFinished(std::list<std::pair<std::shared_ptr<Connection>, std::thread>>* conns);
  void WaitForStop(int timeout_ms) const;

  BlockDevice* const dev;
  const NbdServerOptions opts;
  uint16_t transmission_flags = 0;
  uint32_t preferred_block = 4096;

  std::vector<std::unique_ptr<ListenSocket>> listeners;
  UniqueFd stop_fd;  // eventfd; readable once Shutdown() was called
  UniqueFd reap_fd;  // eventfd; a connection thread finished
  Status init_status;
  std::atomic<bool> stopping{false};

  // A worker waiting for a job sleeps on its own futex word, and Submit()
  // wakes exactly the workers it takes off `idle`.  (With one condition
  // variable, glibc made a signaller wait until workers signalled before
  // had left it: on one CPU, a switch to each of them mid-Submit.)
  struct IdleWorker {
    std::atomic<uint32_t> woken{0};
    void Wait();
    void Wake();
    void Futex(int op, uint32_t value);  // on `woken`
  };
  std::mutex pool_mu;
  std::deque<Job> jobs;
  bool pool_stop = false;
  // Workers asleep, the last to fall asleep at the back (woken first: its
  // cache is the warmest), and how many were taken off it and woken but
  // have not taken pool_mu again.  Submit() wakes one only while queued
  // jobs outnumber the wake-ups on their way.
  std::vector<IdleWorker*> idle;
  size_t wakes_in_flight = 0;
  std::deque<IdleWorker> parked;  // one per worker; outlives the threads
  std::vector<std::thread> workers;

  // Readers that may run lone reads and writes themselves
  // (Connection::role_).  Each such thread builds the volume's per-thread
  // read and write state (six 128 KiB buffers, codec contexts, an io_uring
  // ring) as a worker does, so their number is bounded like the workers',
  // by the CPUs, instead of growing with the connections.  A connection
  // keeps its permit until it ends.  Reader threads end with their
  // connections; what they freed stays in glibc's arenas, which insitud
  // caps at the CPUs (M_ARENA_MAX) so that the next threads reuse it.
  bool TakeInlinePermit() {
    unsigned n = inline_readers.load();
    while (n < max_inline_readers) {
      if (inline_readers.compare_exchange_weak(n, n + 1)) return true;
    }
    return false;
  }
  void ReturnInlinePermit() { inline_readers--; }
  std::atomic<unsigned> inline_readers{0};
  unsigned max_inline_readers = 2;
  // Whether a reader that handed requests to the pool yields its CPU before
  // it reads the socket again (Connection::Recv): only when the process may
  // run on one CPU (its affinity when the server was made), where the woken
  // workers are what the yield lets run.  On several CPUs shared with other
  // processes a yield puts the reader behind whatever else is runnable
  // there, the client included (docs/design.md, "A wake-up only for a job
  // no worker has taken").
  bool yield_after_handoff = false;

  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> in_flight{0};
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> pool_handoffs{0};
  std::atomic<uint64_t> poll_hits{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};
};

namespace {

// One client connection.  The reader thread runs Serve(); workers run
// Execute() and, through Send(), write replies; so does the reader for a
// lone read or write, while the standby thread watches the socket
// (role_).  The socket stays open until the last reference goes, but is
// shut down when Serve() ends.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(NbdServer::Impl* server, UniqueFd fd, std::string peer)
      : server_(*server), fd_(std::move(fd)), peer_(std::move(peer)) {}

  void Serve();
  void Execute(Job& job);
  // A worker took one of this connection's jobs from the pool.
  void Started();

  // Set by the connection's thread when it is about to exit.
  std::atomic<bool> finished{false};

 private:
  enum class Io { kOk, kEof, kStopped, kError };
  enum class Next { kContinue, kTransmit, kClose };

  void Log(const std::string& what) const { server_.Log("nbd client " + peer_ + ": " + what); }
  Io Recv(void* buf, size_t len);
  Io Skip(uint64_t len);
  // Polls the socket for up to NbdServerOptions::poll_us while the client
  // has been sending one request at a time (lone_streak_); true when data
  // (or the end) arrived.  Called when a receive found nothing.
  bool PollForRequest();
  // Bytes the client sent that the reader has taken in but not parsed.
  bool Buffered() const { return rpos_ < rlen_; }
  bool SendAll(std::span<const uint8_t> bytes);
  bool SendOptionReply(uint32_t option, uint32_t type, std::string_view message);

  bool Handshake();
  Next HandleOption(uint32_t option, std::span<const uint8_t> data);
  Next HandleInfo(uint32_t option, std::span<const uint8_t> data);
  Next HandleMetaContext(uint32_t option, std::span<const uint8_t> data);
  bool ExportMatches(const std::string& name) const {
    return name.empty() || name == server_.opts.export_name;
  }
  void EnterTransmission();
  void Transmit();

  // Reads one request; a request the server rejects is answered at once.
  enum class Read { kJob, kReplied, kClose };
  Read ReadRequest(Job* job);
  // Hands a request to the worker pool: queues it in pending_, which
  // SubmitPending() passes on (returning whether the pool still holds
  // queued jobs).
  void Dispatch(Job job);
  bool SubmitPending();
  // Requests of this connection read and not yet answered (unanswered_).
  uint64_t Unanswered() const { return unanswered_.load(); }
  // The reader may run requests itself: it holds one of the server's
  // permits (taken at its first lone read or write) and its standby runs.
  bool CanRunInline();
  bool StartStandby();
  void StopStandby();
  bool WatchSocket(bool armed);
  // Runs a request on the reader thread while the standby watches the
  // socket; false when the standby found the connection closing.
  bool RunWithStandby(Job& job);
  void Standby();

  void Reserve(uint64_t charge);
  void Release(uint64_t charge, uint64_t requests = 1);
  void WaitIdle();

  Reply OkReply(const nbd::Request& r) const;
  Reply ErrorReply(const nbd::Request& r, uint32_t error, std::string_view message) const;
  void Send(Reply reply);
  void SendAsRole();
  void WriteBatch(std::deque<Reply>* batch);

  NbdServer::Impl& server_;
  const UniqueFd fd_;
  const std::string peer_;

  // Received bytes not yet parsed: rbuf_[rpos_, rlen_).  Holder of the
  // reading role only (see role_).
  static constexpr size_t kRecvBufferBytes = 256 << 10;
  // A payload remainder at least this large is received straight into its
  // destination, not through rbuf_.
  static constexpr size_t kDirectRecvBytes = 16 << 10;
  // How much the first buffered receive after a direct one may take: a
  // client sending large writes has the next one's payload right behind
  // its header, and a full-buffer receive would pull it into rbuf_ only
  // for Recv() to copy it out again (7 % of the daemon's time under 128 KiB
  // writes).  Anything smaller than a page is enough for the header.
  static constexpr size_t kAfterDirectRecvBytes = 4 << 10;
  std::unique_ptr<uint8_t[]> rbuf_{new uint8_t[kRecvBufferBytes]};
  size_t rpos_ = 0;
  size_t rlen_ = 0;
  bool after_direct_ = false;
  // Requests in a row that arrived with nothing else of the connection in
  // flight or received: a client at queue depth 1, whose next request comes
  // a round trip after each reply.  Reading the socket in a busy loop then
  // beats sleeping (a VM's idle CPU takes tens of microseconds to wake);
  // for a client with requests in flight it would only split batches
  // (4 KiB random reads at qd16 lost 8 % when it polled whenever at most
  // one request was in flight).  Holder of the reading role only (see
  // role_): the reader counts, the standby ends the streak.
  static constexpr uint32_t kLoneStreakToPoll = 8;
  uint32_t lone_streak_ = 0;
  // How many polling windows a reader may spend waiting for its client's
  // request to be answered before the client's own window starts
  // (PollForRequest).
  static constexpr int kPollWhileRunning = 8;

  // The reading role.  A read or write that arrives while nothing else of
  // the connection is in flight or received runs on the reader itself:
  // handing it to a worker costs a wake-up and two context switches, the
  // largest share of a request at queue depth 1 (lz4 4 KiB random reads
  // 16.3-16.8k -> 18.5-18.7k IOPS, docs/design.md).  Meanwhile nobody
  // would read the socket, and a slow request (a device stall, a write
  // waiting for a drain) would hold up whatever the client pipelines
  // behind it; so the reader gives the role up (kFree) and arms a
  // one-shot watch on the socket, and if the client sends more before the
  // request is done, the standby thread takes the role, reads what
  // arrived, hands it to the pool and gives the role back.  The reader
  // disarms the watch when its request is done and waits for the role.
  // Whoever holds it (kReader: the reader; kStandby: the standby) alone
  // touches rbuf_ and its state; role_mu_ orders the hand-overs.
  enum class ReadRole { kReader, kFree, kStandby };
  std::mutex role_mu_;
  std::condition_variable role_cv_;
  ReadRole role_ = ReadRole::kReader;
  bool running_inline_ = false;  // the reader runs a request
  bool standby_closed_ = false;  // the standby read the end of the connection
  bool inline_refused_ = false;  // setting up the standby failed (reader only)
  UniqueFd watch_fd_;            // epoll: the socket (one-shot) and wake_fd_
  UniqueFd wake_fd_;             // eventfd: ends the standby
  std::thread standby_;

  // Negotiated during the handshake, then read-only.
  bool no_zeroes_ = false;
  bool structured_ = false;
  bool meta_allocation_ = false;
  nbd::TransmissionState state_;

  std::mutex budget_mu_;
  std::condition_variable budget_cv_;
  uint64_t inflight_bytes_ = 0;
  uint64_t inflight_requests_ = 0;
  // Requests read whose replies have not yet gone to the socket.  Unlike
  // inflight_requests_, which drops after the reply is written, this drops
  // before: a client at queue depth 1 may send its next request as soon as
  // it has the reply, and the reader must then see only that one, or the
  // lone streak ends by a race with the worker that answered.
  std::atomic<uint64_t> unanswered_{0};

  // Jobs of this connection submitted to the pool and not yet taken by a
  // worker.  While there are any, replies wait in send_queue_ for the
  // worker that takes the last of them: a client with many requests in
  // flight is woken once per batch instead of once per reply, which on a
  // busy CPU is a large share of a 4 KiB request's cost.  Replies never
  // wait for a request to run, only for it to start.  A reply carrying
  // more read data than kMaxHeldReplyData goes at once (with any held
  // ones): its transfer outweighs the wake-up, and holding it only stalls
  // the client's pipeline (lz4 128 KiB sequential reads at qd16 measured
  // 4 % slower when they were held too).
  static constexpr size_t kMaxHeldReplyData = 32 << 10;
  std::atomic<uint32_t> queued_{0};
  // Requests read but not yet handed to the pool (read role only).  The
  // role hands over everything one recv() took in at once, before it reads
  // the socket again or waits for budget, so that a worker woken for the
  // first finds the rest queued: on one CPU the woken worker runs at once,
  // and handing requests over one by one made every request a wake-up and
  // two context switches (and sent every reply alone, queued_ being 0).
  std::vector<Job> pending_;

  std::mutex send_mu_;
  std::deque<Reply> send_queue_;
  bool sending_ = false;  // some thread holds the send role
  bool dead_ = false;     // writing failed; replies are dropped (send role only)
  // Kept between batches so that sending allocates nothing (send role only).
  std::deque<Reply> send_batch_;
  std::vector<iovec> send_iov_;
};

Connection::Io Connection::Recv(void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    if (rpos_ < rlen_) {
      const size_t n = std::min(len, rlen_ - rpos_);
      std::memcpy(p, rbuf_.get() + rpos_, n);
      rpos_ += n;
      p += n;
      len -= n;
      continue;
    }
    // Small reads go through the buffer, which takes in every request the
    // client has pipelined with one call; large payloads go straight to
    // their destination.  What the last call took in goes to the pool first,
    // and if no worker has taken it yet and the process runs on one CPU,
    // the workers get it before the socket is read again: reading at once
    // takes in only the few requests that arrived meanwhile (4 KiB random
    // reads at queue depth 16, four connections: 3.6 requests a recv()
    // against 5.2).
    if (SubmitPending() && server_.yield_after_handoff) sched_yield();
    const bool direct = len >= kDirectRecvBytes;
    const size_t window = after_direct_ ? kAfterDirectRecvBytes : kRecvBufferBytes;
    const ssize_t n = direct ? ::recv(fd_.get(), p, len, MSG_DONTWAIT)
                             : ::recv(fd_.get(), rbuf_.get(), window, MSG_DONTWAIT);
    if (n > 0) {
      after_direct_ = direct;
      if (direct) {
        p += n;
        len -= static_cast<size_t>(n);
      } else {
        rpos_ = 0;
        rlen_ = static_cast<size_t>(n);
      }
      continue;
    }
    if (n == 0) return Io::kEof;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return Io::kError;
    if (PollForRequest()) continue;
    // Only block when nothing is buffered, and then also on the stop
    // event, so Shutdown() reaches a reader waiting for an idle client.
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {server_.stop_fd.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return Io::kError;
    if (fds[1].revents & POLLIN) return Io::kStopped;
  }
  return Io::kOk;
}

bool Connection::PollForRequest() {
  const unsigned us = server_.opts.poll_us;
  // A streak means the last request read was the only one in flight and
  // none was read since, so at most that one is in flight now: polling
  // never competes with a batch the workers run.
  if (us == 0 || lone_streak_ < kLoneStreakToPoll) return false;
  // The window is the client's turn: it starts once the request in flight
  // (one that runs on a worker: a flush, or any request of a connection
  // without an inline permit) has been answered, not when the reader handed
  // it over, so that a request that takes longer than the window does not
  // use it up.  Waiting for the answer counts against kPollWhileRunning windows.
  const auto window = std::chrono::microseconds(us);
  const auto start = std::chrono::steady_clock::now();
  const auto latest = start + kPollWhileRunning * window;
  auto until = start + window;
  pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {server_.stop_fd.get(), POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, 0) > 0) {
      // Stopping: the blocking poll in Recv() sees it at once.
      if (fds[1].revents != 0) return false;
      // POLLHUP and POLLERR count too: the recv() that follows reports them.
      server_.poll_hits++;
      return true;
    }
    sched_yield();  // a worker or another reader on this CPU goes first
    const auto now = std::chrono::steady_clock::now();
    if (Unanswered() != 0) until = std::min(latest, now + window);
    if (now >= until) return false;
  }
}

Connection::Io Connection::Skip(uint64_t len) {
  uint8_t scratch[16384];
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, sizeof(scratch)));
    const Io io = Recv(scratch, n);
    if (io != Io::kOk) return io;
    len -= n;
  }
  return Io::kOk;
}

// Used only before transmission starts, when the reader is the only writer.
bool Connection::SendAll(std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return true;
}

bool Connection::SendOptionReply(uint32_t option, uint32_t type, std::string_view message) {
  std::vector<uint8_t> out;
  nbd::AppendOptionReply(
      option, type, std::span(reinterpret_cast<const uint8_t*>(message.data()), message.size()),
      &out);
  return SendAll(out);
}

void Connection::Serve() {
  if (Handshake()) Transmit();
  WaitIdle();
  // Tell the client at once; the descriptor itself closes with the last
  // reference.
  ::shutdown(fd_.get(), SHUT_RDWR);
}

bool Connection::Handshake() {
  if (!SendAll(nbd::EncodeGreeting(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes))) return false;
  uint8_t flag_bytes[nbd::kClientFlagsSize];
  if (Recv(flag_bytes, sizeof(flag_bytes)) != Io::kOk) return false;
  uint32_t client_flags = 0;
  Status st = nbd::ParseClientFlags(flag_bytes, &client_flags);
  if (!st.ok()) {
    Log(st.message() + "; closing");
    return false;
  }
  no_zeroes_ = (client_flags & nbd::kClientFlagNoZeroes) != 0;

  std::vector<uint8_t> data;
  for (;;) {
    uint8_t head[nbd::kOptionHeaderSize];
    if (Recv(head, sizeof(head)) != Io::kOk) return false;
    nbd::OptionHeader opt;
    st = nbd::ParseOptionHeader(head, &opt);
    if (!st.ok()) {
      Log(st.message() + " during the handshake; closing");
      return false;
    }
    if (opt.length > kMaxOptionLength) {
      if (opt.option == nbd::kOptExportName) {
        Log("export name too long; closing");
        return false;
      }
      if (Skip(opt.length) != Io::kOk ||
          !SendOptionReply(opt.option, nbd::kRepErrTooBig, "option data too long")) {
        return false;
      }
      continue;
    }
    data.resize(opt.length);
    if (Recv(data.data(), data.size()) != Io::kOk) return false;
    switch (HandleOption(opt.option, data)) {
      case Next::kContinue:
        continue;
      case Next::kTransmit:
        return true;
      case Next::kClose:
        return false;
    }
  }
}

Connection::Next Connection::HandleOption(uint32_t option, std::span<const uint8_t> data) {
  const auto reply = [&](uint32_t type, std::string_view message) {
    return SendOptionReply(option, type, message) ? Next::kContinue : Next::kClose;
  };
  switch (option) {
    case nbd::kOptExportName: {
      const std::string name(data.begin(), data.end());
      if (!ExportMatches(name)) {
        // This option has no error reply; the protocol says to disconnect.
        Log("unknown export '" + name + "'; closing");
        return Next::kClose;
      }
      EnterTransmission();
      if (!SendAll(nbd::EncodeExportNameReply(state_.export_size, state_.flags, no_zeroes_))) {
        return Next::kClose;
      }
      return Next::kTransmit;
    }
    case nbd::kOptAbort:
      SendOptionReply(option, nbd::kRepAck, "");
      return Next::kClose;
    case nbd::kOptList: {
      if (!data.empty()) return reply(nbd::kRepErrInvalid, "NBD_OPT_LIST takes no data");
      std::vector<uint8_t> out;
      nbd::AppendOptionReply(
          option, nbd::kRepServer,
          nbd::EncodeServerEntry(server_.opts.export_name, server_.opts.description), &out);
      nbd::AppendOptionReply(option, nbd::kRepAck, {}, &out);
      return SendAll(out) ? Next::kContinue : Next::kClose;
    }
    case nbd::kOptStartTls:
      if (!data.empty()) return reply(nbd::kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
      return reply(nbd::kRepErrUnsup, "this server does not support TLS");
    case nbd::kOptInfo:
    case nbd::kOptGo:
      return HandleInfo(option, data);
    case nbd::kOptStructuredReply:
      if (!data.empty())
        return reply(nbd::kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
      structured_ = true;
      return reply(nbd::kRepAck, "");
    case nbd::kOptListMetaContext:
    case nbd::kOptSetMetaContext:
      return HandleMetaContext(option, data);
    default:
      return reply(nbd::kRepErrUnsup, "unknown option " + std::to_string(option));
  }
}

Connection::Next Connection::HandleInfo(uint32_t option, std::span<const uint8_t> data) {
  nbd::InfoRequest req;
  Status st = nbd::ParseInfoRequest(data, &req);
  if (!st.ok()) {
    return SendOptionReply(option, nbd::kRepErrInvalid, st.message()) ? Next::kContinue
                                                                      : Next::kClose;
  }
  if (!ExportMatches(req.export_name)) {
    return SendOptionReply(option, nbd::kRepErrUnknown, "no export named '" + req.export_name + "'")
               ? Next::kContinue
               : Next::kClose;
  }
  EnterTransmission();
  std::vector<uint8_t> out;
  nbd::AppendOptionReply(option, nbd::kRepInfo,
                         nbd::EncodeInfoExport(state_.export_size, state_.flags), &out);
  for (uint16_t type : req.info_types) {
    if (type == nbd::kInfoName) {
      nbd::AppendOptionReply(option, nbd::kRepInfo,
                             nbd::EncodeInfoString(nbd::kInfoName, server_.opts.export_name), &out);
    } else if (type == nbd::kInfoDescription && !server_.opts.description.empty()) {
      nbd::AppendOptionReply(option, nbd::kRepInfo,
                             nbd::EncodeInfoString(nbd::kInfoDescription, server_.opts.description),
                             &out);
    }
  }
  // Sent whether asked for or not: a minimum of 1 imposes nothing on a
  // client that did not ask, and tells one that did the maximum.
  nbd::AppendOptionReply(
      option, nbd::kRepInfo,
      nbd::EncodeInfoBlockSize(1, server_.preferred_block, NbdServer::kMaxPayload), &out);
  nbd::AppendOptionReply(option, nbd::kRepAck, {}, &out);
  if (!SendAll(out)) return Next::kClose;
  return option == nbd::kOptGo ? Next::kTransmit : Next::kContinue;
}

Connection::Next Connection::HandleMetaContext(uint32_t option, std::span<const uint8_t> data) {
  const bool set = option == nbd::kOptSetMetaContext;
  // A SET replaces the selection even when it fails.
  if (set) meta_allocation_ = false;
  const auto fail = [&](uint32_t type, const std::string& message) {
    return SendOptionReply(option, type, message) ? Next::kContinue : Next::kClose;
  };
  if (!structured_) return fail(nbd::kRepErrInvalid, "negotiate structured replies first");
  nbd::MetaContextRequest req;
  Status st = nbd::ParseMetaContextRequest(data, &req);
  if (!st.ok()) return fail(nbd::kRepErrInvalid, st.message());
  if (!ExportMatches(req.export_name)) {
    return fail(nbd::kRepErrUnknown, "no export named '" + req.export_name + "'");
  }
  // "base:" is a wildcard when listing and selects nothing when setting;
  // queries in other namespaces are ignored, as the protocol requires.
  bool match = !set && req.queries.empty();
  for (const std::string& q : req.queries) {
    match = match || q == nbd::kBaseAllocation || (!set && q == "base:");
  }
  std::vector<uint8_t> out;
  if (match) {
    nbd::AppendOptionReply(
        option, nbd::kRepMetaContext,
        nbd::EncodeMetaContext(set ? kAllocationContextId : 0, nbd::kBaseAllocation), &out);
  }
  nbd::AppendOptionReply(option, nbd::kRepAck, {}, &out);
  if (!SendAll(out)) return Next::kClose;
  if (set) meta_allocation_ = match;
  return Next::kContinue;
}

void Connection::EnterTransmission() {
  state_.export_size = server_.dev->Size();
  state_.flags = server_.transmission_flags;
  state_.structured = structured_;
  state_.meta_allocation = meta_allocation_;
  state_.max_payload = NbdServer::kMaxPayload;
}

std::string DescribeRejection(const nbd::Request& r, uint32_t error, uint64_t size) {
  switch (error) {
    case nbd::kEperm:
      return "the export is read-only";
    case nbd::kEnospc:
      return "write past the end of the export (" + std::to_string(size) + " bytes)";
    default:
      return "invalid request: command " + std::to_string(r.type) + ", flags " +
             std::to_string(r.flags) + ", offset " + std::to_string(r.offset) + ", length " +
             std::to_string(r.length) + " (export size " + std::to_string(size) + ")";
  }
}

void Connection::Transmit() {
  while (!server_.stopping.load()) {
    Job job;
    const Read read = ReadRequest(&job);
    if (read == Read::kClose) break;
    if (read == Read::kReplied) continue;
    const bool lone = !Buffered() && Unanswered() == 1;  // only the request just read
    lone_streak_ = lone ? lone_streak_ + 1 : 0;
    const bool read_or_write = job.req.type == nbd::kCmdRead || job.req.type == nbd::kCmdWrite;
    if (read_or_write && lone && CanRunInline()) {
      if (!RunWithStandby(job)) break;
      continue;
    }
    Dispatch(std::move(job));
  }
  SubmitPending();
  StopStandby();
}

void Connection::Dispatch(Job job) {
  queued_.fetch_add(1);
  pending_.push_back(std::move(job));
}

bool Connection::SubmitPending() { return !pending_.empty() && server_.Submit(&pending_); }

Connection::Read Connection::ReadRequest(Job* job) {
  uint8_t head[nbd::kRequestHeaderSize];
  if (Recv(head, sizeof(head)) != Io::kOk) return Read::kClose;
  nbd::Request req;
  Status st = nbd::ParseRequestHeader(head, &req);
  if (!st.ok()) {
    Log(st.message() + "; closing");
    return Read::kClose;
  }
  if (req.type == nbd::kCmdDisc) return Read::kClose;
  server_.requests_total++;
  const bool is_write = req.type == nbd::kCmdWrite;
  if (is_write && req.length > NbdServer::kMaxPayload) {
    Log("write of " + std::to_string(req.length) + " bytes exceeds the " +
        std::to_string(NbdServer::kMaxPayload) + "-byte maximum; closing");
    return Read::kClose;
  }
  uint32_t error = nbd::CheckRequest(req, state_);
  uint64_t charge = kRequestCharge;
  if (error == 0 && (is_write || req.type == nbd::kCmdRead)) charge += req.length;
  if (error == 0 && req.type == nbd::kCmdBlockStatus) charge += kBlockStatusCharge;
  Reserve(charge);

  *job = Job{shared_from_this(), req, nullptr, charge};
  if (is_write) {
    if (error == 0) {
      job->data = AllocateData(req.length);
      if (!job->data) error = nbd::kEnomem;
    }
    // A rejected write's payload is still on the wire and must be read
    // past to find the next request.
    const Io io = job->data ? Recv(job->data.get(), req.length) : Skip(req.length);
    if (io != Io::kOk) {
      unanswered_--;
      Release(charge);
      return Read::kClose;
    }
  }
  if (error != 0) {
    Reply reply =
        ErrorReply(req, error,
                   error == nbd::kEnomem ? "out of memory"
                                         : DescribeRejection(req, error, state_.export_size));
    reply.charge = charge;
    Send(std::move(reply));
    return Read::kReplied;
  }
  return Read::kJob;
}

bool Connection::CanRunInline() {
  if (standby_.joinable()) return true;
  if (inline_refused_ || !server_.TakeInlinePermit()) return false;
  if (StartStandby()) return true;
  watch_fd_.Reset();  // what did open goes back at once
  wake_fd_.Reset();
  server_.ReturnInlinePermit();
  inline_refused_ = true;  // out of descriptors or threads: do not retry
  return false;
}

bool Connection::StartStandby() {
  watch_fd_.Reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (watch_fd_.get() < 0 || wake_fd_.get() < 0) return false;
  epoll_event sock{};  // disarmed until a request runs on the reader (WatchSocket)
  sock.events = EPOLLONESHOT;
  sock.data.fd = fd_.get();
  epoll_event wake{};
  wake.events = EPOLLIN;
  wake.data.fd = wake_fd_.get();
  if (::epoll_ctl(watch_fd_.get(), EPOLL_CTL_ADD, fd_.get(), &sock) != 0 ||
      ::epoll_ctl(watch_fd_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &wake) != 0) {
    return false;
  }
  try {
    standby_ = std::thread([this] { Standby(); });
  } catch (const std::system_error&) {
    return false;
  }
  return true;
}

void Connection::StopStandby() {
  if (!standby_.joinable()) return;
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
  standby_.join();
  server_.ReturnInlinePermit();
}

// epoll always reports a hang-up or an error, whatever the mask; with
// EPOLLONESHOT in it too, a disarmed watch wakes the standby at most once
// for those (the standby then finds the role taken), never in a loop.
bool Connection::WatchSocket(bool armed) {
  epoll_event ev{};
  ev.events = armed ? EPOLLIN | EPOLLONESHOT : EPOLLONESHOT;
  ev.data.fd = fd_.get();
  return ::epoll_ctl(watch_fd_.get(), EPOLL_CTL_MOD, fd_.get(), &ev) == 0;
}

bool Connection::RunWithStandby(Job& job) {
  {
    std::lock_guard<std::mutex> lock(role_mu_);
    role_ = ReadRole::kFree;
    running_inline_ = true;
    if (!WatchSocket(true)) {
      // Nobody would read meanwhile: hand the request over after all.
      role_ = ReadRole::kReader;
      running_inline_ = false;
      Dispatch(std::move(job));
      return true;
    }
  }
  Execute(job);
  std::unique_lock<std::mutex> lock(role_mu_);
  running_inline_ = false;
  WatchSocket(false);  // a failure costs the standby one spurious wake-up
  role_cv_.wait(lock, [&] { return role_ != ReadRole::kStandby; });
  role_ = ReadRole::kReader;
  return !standby_closed_;
}

void Connection::Standby() {
  for (;;) {
    epoll_event ev[2];
    const int n = ::epoll_wait(watch_fd_.get(), ev, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;  // no event: the role is not the standby's to take
      return;
    }
    for (int i = 0; i < n; i++) {
      if (ev[i].data.fd == wake_fd_.get()) return;
    }
    {
      std::lock_guard<std::mutex> lock(role_mu_);
      if (role_ != ReadRole::kFree) continue;
      role_ = ReadRole::kStandby;
    }
    bool close = false;
    do {
      Job job;
      const Read read = ReadRequest(&job);
      if (read == Read::kClose) {
        close = true;
      } else if (read == Read::kJob) {
        lone_streak_ = 0;  // it arrived behind the reader's request
        Dispatch(std::move(job));
      }
    } while (!close && Buffered());
    SubmitPending();
    std::lock_guard<std::mutex> lock(role_mu_);
    role_ = ReadRole::kFree;
    standby_closed_ = close;
    // More may arrive while the reader's request runs: watch again.
    if (running_inline_ && !close) WatchSocket(true);
    role_cv_.notify_all();
  }
}

void Connection::Reserve(uint64_t charge) {
  std::unique_lock<std::mutex> lock(budget_mu_);
  // An idle connection always admits one request, whatever its size.
  const auto admits = [&] {
    return inflight_requests_ == 0 || inflight_bytes_ + charge <= server_.opts.max_inflight_bytes;
  };
  if (!admits() && !pending_.empty()) {
    // The budget comes back as requests finish: the pending ones too.
    lock.unlock();
    SubmitPending();
    lock.lock();
  }
  budget_cv_.wait(lock, admits);
  inflight_bytes_ += charge;
  inflight_requests_++;
  unanswered_++;
  server_.in_flight++;
}

void Connection::Release(uint64_t charge, uint64_t requests) {
  server_.in_flight -= requests;
  {
    std::lock_guard<std::mutex> lock(budget_mu_);
    inflight_bytes_ -= charge;
    inflight_requests_ -= requests;
  }
  budget_cv_.notify_all();
}

void Connection::WaitIdle() {
  std::unique_lock<std::mutex> lock(budget_mu_);
  budget_cv_.wait(lock, [&] { return inflight_requests_ == 0; });
}

Reply Connection::OkReply(const nbd::Request& r) const {
  // A simple reply is valid for every successful command but a read, and
  // is the shorter one.
  return Reply(nbd::EncodeSimpleReply(0, r.cookie), nullptr, 0);
}

Reply Connection::ErrorReply(const nbd::Request& r, uint32_t error,
                             std::string_view message) const {
  if (structured_) {
    return Reply(nbd::EncodeErrorChunk(nbd::kReplyFlagDone, r.cookie, error, message));
  }
  // A simple error reply to a read carries no data, as the protocol asks.
  return Reply(nbd::EncodeSimpleReply(error, r.cookie), nullptr, 0);
}

void Connection::Execute(Job& job) {
  const nbd::Request& r = job.req;
  BlockDevice& dev = *server_.dev;
  const bool fua = (r.flags & nbd::kCmdFlagFua) != 0;
  Status st;
  Reply reply;
  switch (r.type) {
    case nbd::kCmdRead: {
      DataBuffer buf = AllocateData(r.length);
      if (!buf) {
        st = Status::FromErrno(ENOMEM, "allocating a read buffer");
        break;
      }
      if (r.length > 0) st = dev.Read(r.offset, buf.get(), r.length);
      if (!st.ok()) break;
      server_.bytes_read += r.length;
      if (!structured_) {
        reply = Reply(nbd::EncodeSimpleReply(0, r.cookie), std::move(buf), r.length);
      } else if (r.length == 0) {
        // A data chunk must carry at least one byte.
        reply = Reply(nbd::EncodeChunkHeader(nbd::kReplyFlagDone, nbd::kReplyTypeNone, r.cookie, 0),
                      nullptr, 0);
      } else {
        reply =
            Reply(nbd::EncodeOffsetDataHeader(nbd::kReplyFlagDone, r.cookie, r.offset, r.length),
                  std::move(buf), r.length);
      }
      break;
    }
    case nbd::kCmdWrite:
      st = dev.Write(r.offset, job.data.get(), r.length, fua);
      if (st.ok()) server_.bytes_written += r.length;
      job.data.reset();
      break;
    case nbd::kCmdFlush:
      if (!server_.opts.read_only) st = dev.Flush();
      break;
    case nbd::kCmdTrim:
      st = dev.Discard(r.offset, r.length);
      if (st.ok() && fua) st = dev.Flush();
      break;
    case nbd::kCmdWriteZeroes:
      // NO_HOLE needs nothing: every device here reads zeros back either
      // way, and the volume allocates no space for zeros in any case.
      st = dev.WriteZeroes(r.offset, r.length, fua);
      break;
    case nbd::kCmdCache:
      // The range was validated; there is no cache here to warm.
      break;
    case nbd::kCmdBlockStatus: {
      const uint32_t len = std::min(r.length, kMaxBlockStatusQuery);
      std::vector<AllocationRun> runs;
      st = dev.GetAllocation(r.offset, len, &runs);
      if (!st.ok()) break;
      const size_t limit = (r.flags & nbd::kCmdFlagReqOne) ? 1 : kMaxBlockStatusDescriptors;
      const auto descriptors = nbd::AllocationToDescriptors(runs, len, limit);
      if (descriptors.empty()) {
        st = Status::IOError("the device returned an empty allocation map");
        break;
      }
      reply = Reply(nbd::EncodeBlockStatusChunk(nbd::kReplyFlagDone, r.cookie, kAllocationContextId,
                                                descriptors));
      break;
    }
  }
  if (!st.ok()) {
    const uint32_t error = nbd::ErrnoToNbdError(st.err());
    // Device failures are the server's news, not the client's: the client
    // gets the error class, the log gets the details.
    const bool client_fault = st.code() == Status::Code::kInvalidArgument ||
                              st.code() == Status::Code::kOutOfRange ||
                              st.code() == Status::Code::kNoSpace;
    if (!client_fault) Log("command " + std::to_string(r.type) + " failed: " + st.ToString());
    reply = ErrorReply(r, error, client_fault ? st.message() : ErrnoText(st.err()));
  } else if (reply.head_size() == 0) {
    reply = OkReply(r);
  }
  reply.charge = job.charge;
  Send(std::move(reply));
}

// Whoever finds the send role free takes it, unless the reply may wait and
// a job of this connection is waiting for a worker, and writes every queued
// reply, including ones queued by others meanwhile; the others return at
// once.  A reply left queued because a job was waiting is sent by Started()
// for the last such job, or by a later Send(): queued_ is read after the
// reply is queued, and Started() looks at the queue after lowering
// queued_, so one of the two sees the other.
void Connection::Send(Reply reply) {
  const bool may_wait = reply.data_len <= kMaxHeldReplyData;
  {
    std::lock_guard<std::mutex> lock(send_mu_);
    send_queue_.push_back(std::move(reply));
    if (sending_ || (may_wait && queued_.load() > 0)) return;
    sending_ = true;
  }
  SendAsRole();
}

void Connection::Started() {
  if (queued_.fetch_sub(1) != 1) return;
  {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (sending_ || send_queue_.empty()) return;
    sending_ = true;
  }
  SendAsRole();
}

// Holder of the send role: writes batches until the queue is empty.
void Connection::SendAsRole() {
  std::deque<Reply>& batch = send_batch_;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(send_mu_);
      if (send_queue_.empty()) {
        sending_ = false;
        return;
      }
      batch.swap(send_queue_);
    }
    unanswered_ -= batch.size();
    WriteBatch(&batch);
    uint64_t charge = 0;
    const uint64_t count = batch.size();
    for (const Reply& r : batch) charge += r.charge;
    batch.clear();  // free the buffers before admitting more requests
    Release(charge, count);
  }
}

void Connection::WriteBatch(std::deque<Reply>* batch) {
  if (dead_) return;
  std::vector<iovec>& iov = send_iov_;
  iov.clear();
  for (Reply& r : *batch) {
    iov.push_back({const_cast<uint8_t*>(r.head()), r.head_size()});
    if (r.data_len > 0) iov.push_back({r.data.get(), r.data_len});
  }
  size_t i = 0;
  while (i < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[i];
    msg.msg_iovlen = std::min<size_t>(iov.size() - i, IOV_MAX);
    const ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        Log("client has not read replies for " + std::to_string(kSendTimeoutSeconds) +
            " s; disconnecting");
      }
      // The reader may be blocked in recv(); shutting the socket down ends it.
      dead_ = true;
      ::shutdown(fd_.get(), SHUT_RDWR);
      return;
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      if (left >= iov[i].iov_len) {
        left -= iov[i].iov_len;
        i++;
      } else {
        iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + left;
        iov[i].iov_len -= left;
        left = 0;
      }
    }
  }
}

}  // namespace

// ---- NbdServer::Impl -----------------------------------------------------

unsigned UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1u, static_cast<unsigned>(CPU_COUNT(&set)));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

unsigned DefaultWorkerThreads(bool blocking_device) {
  const unsigned cpus = UsableCpus();
  // Workers that mostly compress and copy (page cache I/O) only need to
  // cover the CPUs; more of them cost context switches (measured: 16
  // workers on one CPU serve 15-20 % fewer 4 KiB requests than 2-4).
  // Workers that wait for the device need to outnumber the CPUs to keep it
  // busy.
  return blocking_device ? std::max(16u, 4 * cpus) : std::max(4u, 4 * cpus);
}

NbdServer::Impl::Impl(BlockDevice* device, NbdServerOptions options)
    : dev(device), opts(std::move(options)) {
  const unsigned cpus = UsableCpus();
  max_inline_readers = std::max(2u, cpus);
  yield_after_handoff = cpus == 1;
  transmission_flags =
      nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendCache | nbd::kFlagCanMultiConn;
  if (opts.read_only) {
    transmission_flags |= nbd::kFlagReadOnly;
  } else {
    transmission_flags |= nbd::kFlagSendFua | nbd::kFlagSendTrim | nbd::kFlagSendWriteZeroes;
  }
  // The protocol wants a power of two from 512 up; anything else a device
  // reports is replaced by the usual page size.
  const uint32_t pref = dev->PreferredBlockSize();
  if (pref >= 512 && pref <= kMaxPayload && (pref & (pref - 1)) == 0) preferred_block = pref;
  stop_fd.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  reap_fd.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (stop_fd.get() < 0 || reap_fd.get() < 0) init_status = Status::FromErrno(errno, "eventfd");
}

bool NbdServer::Impl::Submit(std::vector<Job>* batch) {
  std::unique_lock<std::mutex> lock(pool_mu);
  for (Job& job : *batch) jobs.push_back(std::move(job));
  batch->clear();
  pool_handoffs++;
  // A wake-up for every queued job an idle worker could take: a worker may
  // block in the device with the rest queued behind it (direct I/O), so
  // every idle worker may be needed.  But the count is taken again after
  // each wake-up: on one CPU the worker just woken usually runs at once,
  // ahead of this thread, and takes the whole batch; waking the rest then
  // only made them find the queue empty (two context switches each).
  while (jobs.size() > wakes_in_flight && !idle.empty()) {
    IdleWorker* w = idle.back();
    idle.pop_back();
    wakes_in_flight++;
    lock.unlock();
    w->Wake();
    lock.lock();
  }
  return !jobs.empty();
}

void NbdServer::Impl::IdleWorker::Futex(int op, uint32_t value) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&woken), op, value, nullptr, nullptr, 0);
}

void NbdServer::Impl::IdleWorker::Wait() {
  // FUTEX_WAIT returns at once if Wake() came first (the word is no longer 0).
  while (woken.load(std::memory_order_acquire) == 0) Futex(FUTEX_WAIT_PRIVATE, 0);
}

void NbdServer::Impl::IdleWorker::Wake() {
  woken.store(1, std::memory_order_release);
  Futex(FUTEX_WAKE_PRIVATE, 1);
}

void NbdServer::Impl::WorkerLoop(IdleWorker* self) {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(pool_mu);
      while (!pool_stop && jobs.empty()) {
        self->woken.store(0, std::memory_order_relaxed);
        idle.push_back(self);
        lock.unlock();
        self->Wait();
        lock.lock();
        wakes_in_flight--;  // whoever woke this worker took it off `idle`
      }
      if (jobs.empty()) return;
      job = std::move(jobs.front());
      jobs.pop_front();
    }
    job.conn->Started();
    job.conn->Execute(job);
  }
}

Status NbdServer::Impl::StartWorkers() {
  const unsigned n = opts.threads > 0 ? opts.threads : DefaultWorkerThreads(false);
  try {
    idle.reserve(n);  // so that going to sleep never allocates
    for (unsigned i = 0; i < n; i++) {
      IdleWorker* self = &parked.emplace_back();
      workers.emplace_back([this, self] { WorkerLoop(self); });
    }
  } catch (const std::system_error& e) {
    StopWorkers();
    return Status::IOError(std::string("cannot start worker threads: ") + e.what());
  }
  return Status::OK();
}

void NbdServer::Impl::StopWorkers() {
  std::vector<IdleWorker*> sleeping;
  {
    std::lock_guard<std::mutex> lock(pool_mu);
    pool_stop = true;
    sleeping.swap(idle);
    wakes_in_flight += sleeping.size();
  }
  for (IdleWorker* w : sleeping) w->Wake();
  for (std::thread& t : workers) t.join();
  workers.clear();
}

void NbdServer::Impl::WaitForStop(int timeout_ms) const {
  pollfd fd{stop_fd.get(), POLLIN, 0};
  ::poll(&fd, 1, timeout_ms);
}

void NbdServer::Impl::AcceptOne(
    int listen_fd, std::list<std::pair<std::shared_ptr<Connection>, std::thread>>* conns) {
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  UniqueFd fd(::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      // The pending connection keeps the listener readable; pause instead
      // of spinning until descriptors or memory come back.
      Log("cannot accept a connection: " + ErrnoText(err));
      WaitForStop(100);
    }
    return;
  }
  if (connections.load() >= opts.max_connections) {
    Log("too many connections (" + std::to_string(opts.max_connections) + "); refusing one");
    return;
  }
  const int one = 1;
  if (peer.ss_family != AF_UNIX)
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const timeval send_timeout{kSendTimeoutSeconds, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));

  std::string peer_name = FormatSockaddr(reinterpret_cast<sockaddr*>(&peer));
  ucred cred{};
  socklen_t cred_len = sizeof(cred);
  if (peer.ss_family == AF_UNIX &&
      ::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0) {
    peer_name += " pid " + std::to_string(cred.pid);
  }
  auto conn = std::make_shared<Connection>(this, std::move(fd), std::move(peer_name));
  connections++;
  connections_total++;
  try {
    std::thread t([this, conn] {
      conn->Serve();
      connections--;
      conn->finished = true;
      const uint64_t one_event = 1;
      // Wakes Run() to join this thread; failure only delays the join.
      [[maybe_unused]] ssize_t n = ::write(reap_fd.get(), &one_event, sizeof(one_event));
    });
    conns->emplace_back(std::move(conn), std::move(t));
  } catch (const std::system_error& e) {
    connections--;
    Log(std::string("cannot start a thread for a new connection: ") + e.what());
  }
}

void NbdServer::Impl::ReapFinished(
    std::list<std::pair<std::shared_ptr<Connection>, std::thread>>* conns) {
  uint64_t events = 0;
  [[maybe_unused]] ssize_t n = ::read(reap_fd.get(), &events, sizeof(events));
  for (auto it = conns->begin(); it != conns->end();) {
    if (it->first->finished.load()) {
      it->second.join();
      it = conns->erase(it);
    } else {
      ++it;
    }
  }
}

// ---- NbdServer -----------------------------------------------------------

NbdServer::NbdServer(BlockDevice* dev, NbdServerOptions opts)
    : impl_(std::make_unique<Impl>(dev, std::move(opts))) {}

NbdServer::~NbdServer() = default;

Status NbdServer::Listen(const std::string& spec) {
  std::unique_ptr<ListenSocket> ls;
  INSITU_RETURN_IF_ERROR(ListenSocket::Open(spec, &ls));
  impl_->listeners.push_back(std::move(ls));
  return Status::OK();
}

std::vector<std::string> NbdServer::Addresses() const {
  std::vector<std::string> out;
  for (const auto& ls : impl_->listeners) out.push_back(ls->address());
  return out;
}

Status NbdServer::Run() {
  Impl& s = *impl_;
  INSITU_RETURN_IF_ERROR(s.init_status);
  if (s.listeners.empty()) return Status::InvalidArgument("no listen address given");
  INSITU_RETURN_IF_ERROR(s.StartWorkers());

  std::list<std::pair<std::shared_ptr<Connection>, std::thread>> conns;
  std::vector<pollfd> fds;
  fds.push_back({s.stop_fd.get(), POLLIN, 0});
  fds.push_back({s.reap_fd.get(), POLLIN, 0});
  for (const auto& ls : s.listeners) fds.push_back({ls->fd(), POLLIN, 0});
  Status result;
  while (!s.stopping.load()) {
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      result = Status::FromErrno(errno, "poll");
      break;
    }
    if (fds[1].revents & POLLIN) s.ReapFinished(&conns);
    for (size_t i = 2; i < fds.size(); i++) {
      if (fds[i].revents & POLLIN) s.AcceptOne(fds[i].fd, &conns);
    }
  }
  // Stop accepting first, so clients are refused rather than left waiting.
  s.listeners.clear();
  // Readers see the stop event, stop taking requests and return once their
  // in-flight requests are answered; the workers keep running until then.
  s.stopping = true;
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(s.stop_fd.get(), &one, sizeof(one));
  for (auto& [conn, thread] : conns) thread.join();
  conns.clear();
  s.StopWorkers();
  return result;
}

void NbdServer::Shutdown() {
  // Only an atomic store and write(2): safe in a signal handler.
  impl_->stopping.store(true);
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(impl_->stop_fd.get(), &one, sizeof(one));
}

NbdServerCounters NbdServer::Counters() const {
  const Impl& s = *impl_;
  NbdServerCounters c;
  c.connections = s.connections.load();
  c.connections_total = s.connections_total.load();
  c.inline_readers = s.inline_readers.load();
  c.requests_in_flight = s.in_flight.load();
  c.requests_total = s.requests_total.load();
  c.pool_handoffs = s.pool_handoffs.load();
  c.poll_hits = s.poll_hits.load();
  c.bytes_read = s.bytes_read.load();
  c.bytes_written = s.bytes_written.load();
  return c;
}

}  // namespace insitu
