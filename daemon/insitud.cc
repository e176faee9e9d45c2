// insitud: serves an insitu volume over NBD until told to stop.
//
// Threads and signals.  SIGTERM, SIGINT and SIGHUP are blocked before any
// thread exists, so every thread inherits the mask and the signals are
// only ever seen through one signalfd, read by the event thread.  That
// thread also answers the control socket.  The main thread runs the NBD
// server; a signal makes the event thread call NbdServer::Shutdown(), the
// server finishes every request already read and returns, and only then
// is the volume closed (metadata written, clean flag set) and the process
// exits 0.  SIGPIPE is ignored: a client that goes away is the server's
// business, never a reason to die.
//
// Control protocol (a Unix socket, mode 0600, given with --control): the
// client sends one line, the daemon answers one JSON object and closes.
//   status   {"device", "export", "read_only", "split_extents", "fit_units", "listen",
//             "superblock", "volume", "server": {connections, connections_total,
//             inline_readers, requests_in_flight, requests_total, pool_handoffs,
//             poll_hits, bytes_read, bytes_written, uptime_s}}
//   other    {"error": "..."}
// The field names are an interface (`insitu status` reads them).
//
// Exit status: 0 after a clean shutdown, 1 when the volume could not be
// opened, served or closed cleanly, 2 for an invalid command line.
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "libcore/codec.h"
#include "libcore/file_device.h"
#include "libcore/nbd/server.h"
#include "libcore/volume.h"
#include "libcore/volume_json.h"

namespace insitu {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
// A control client gets this long to send its line and take the reply; the
// event thread serves one client at a time and must get back to signals.
constexpr int kControlTimeoutMs = 1000;
constexpr size_t kMaxControlLine = 256;

struct Args {
  std::string target;
  std::vector<std::string> listen;
  std::string export_name;
  bool read_only = false;
  bool no_split = false;
  bool no_fit = false;
  std::string control;
  unsigned threads = 0;
  unsigned poll_us = NbdServerOptions{}.poll_us;
  std::string pidfile;
  std::string io;
};

bool IsBlockDevice(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

void Say(const std::string& line) { std::cerr << "insitud: " + line + "\n"; }

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string HumanSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    unit++;
  }
  char out[32];
  std::snprintf(out, sizeof(out), unit == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[unit]);
  return out;
}

// unix:$RUNTIME/insitu/NAME.sock, where RUNTIME is /run for root and
// $XDG_RUNTIME_DIR for anyone else: per-user, private, and cleared at boot.
Status DefaultListen(const std::string& target, std::string* spec) {
  std::string runtime;
  if (::geteuid() == 0) {
    runtime = "/run";
  } else if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    runtime = xdg;
  } else {
    return Status::InvalidArgument(
        "no --listen given and XDG_RUNTIME_DIR is not set; pass --listen unix:PATH");
  }
  const std::string dir = runtime + "/insitu";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "creating " + dir);
  }
  std::string name = std::filesystem::path(target).filename().string();
  if (name.empty()) name = "insitu";
  *spec = "unix:" + dir + "/" + name + ".sock";
  return Status::OK();
}

// Removes the pid file on every way out of main() once it was written.
class PidFile {
 public:
  Status Write(const std::string& path) {
    std::ofstream out(path, std::ios::trunc);
    out << ::getpid() << "\n";
    out.close();
    if (!out) return Status::IOError("cannot write the pid file " + path);
    path_ = path;
    return Status::OK();
  }
  ~PidFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }

 private:
  std::string path_;
};

// The event thread: signals and the control socket.
class EventLoop {
 public:
  EventLoop(NbdServer* server, std::function<nlohmann::json()> status)
      : server_(server), status_(std::move(status)) {}

  Status Init(const sigset_t& signals, const std::string& control_path) {
    signal_fd_ = std::make_unique<Fd>(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
    stop_fd_ = std::make_unique<Fd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (signal_fd_->get() < 0 || stop_fd_->get() < 0) {
      return Status::FromErrno(errno, "setting up signal handling");
    }
    if (!control_path.empty()) {
      return ListenSocket::Open("unix:" + control_path, &control_)
          .Annotate("control socket " + control_path);
    }
    return Status::OK();
  }

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }

  void Stop() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_->get(), &one, sizeof(one));
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    std::vector<pollfd> fds = {{signal_fd_->get(), POLLIN, 0}, {stop_fd_->get(), POLLIN, 0}};
    if (control_) fds.push_back({control_->fd(), POLLIN, 0});
    for (;;) {
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        Say(std::string("poll: ") + std::strerror(errno) + "; shutting down");
        server_->Shutdown();
        return;
      }
      if (fds[1].revents & POLLIN) return;
      if (fds[0].revents & POLLIN) HandleSignal();
      if (fds.size() > 2 && (fds[2].revents & POLLIN)) ServeControlClient();
    }
  }

  void HandleSignal() {
    signalfd_siginfo info;
    while (::read(signal_fd_->get(), &info, sizeof(info)) == sizeof(info)) {
      const char* name = sigabbrev_np(static_cast<int>(info.ssi_signo));
      if (shutting_down_) {
        Say(std::string("SIG") + name + " received; already shutting down");
        continue;
      }
      Say(std::string("SIG") + name + " received; finishing requests in flight");
      shutting_down_ = true;
      server_->Shutdown();
    }
  }

  // Keeps answering during shutdown, so a monitor can watch requests drain.
  void ServeControlClient() {
    Fd client(::accept4(control_->fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (client.get() < 0) return;
    std::string line;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(kControlTimeoutMs);
    auto remaining_ms = [&] {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      return static_cast<int>(std::max<int64_t>(0, left.count()));
    };
    while (line.find('\n') == std::string::npos && line.size() < kMaxControlLine) {
      pollfd pfd{client.get(), POLLIN, 0};
      if (::poll(&pfd, 1, remaining_ms()) <= 0) return;
      char buf[kMaxControlLine];
      const ssize_t n = ::recv(client.get(), buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    line = line.substr(0, line.find('\n'));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    nlohmann::json reply;
    if (line == "status") {
      reply = status_();
    } else {
      reply = {{"error", "unknown command '" + line.substr(0, 64) + "'; known commands: status"}};
    }
    const std::string text = reply.dump() + "\n";
    for (size_t sent = 0; sent < text.size();) {
      const ssize_t n = ::send(client.get(), text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        pollfd pfd{client.get(), POLLOUT, 0};
        if (::poll(&pfd, 1, remaining_ms()) <= 0) return;
        continue;
      }
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  NbdServer* server_;
  std::function<nlohmann::json()> status_;
  std::unique_ptr<Fd> signal_fd_;
  std::unique_ptr<Fd> stop_fd_;
  std::unique_ptr<ListenSocket> control_;
  bool shutting_down_ = false;
  std::thread thread_;
};

constexpr const char* kFooter = R"(Listen addresses:
  unix:PATH        a Unix socket, created mode 0600 (an existing socket file is
                   replaced only when no server answers on it)
  tcp:HOST:PORT    TCP; tcp:PORT or tcp::PORT listen on 127.0.0.1 only.
                   Use tcp:0.0.0.0:PORT or tcp:[::]:PORT to listen on every
                   interface; NBD has no authentication.
  --listen may be given several times.  Without it the daemon listens on
  unix:/run/insitu/NAME.sock (root) or unix:$XDG_RUNTIME_DIR/insitu/NAME.sock,
  where NAME is the file name of TARGET.

Control socket: connect to the --control path, send "status\n", read one JSON
object (insitu status does this for you).

Signals: SIGTERM, SIGINT and SIGHUP stop accepting connections, finish every
request in flight, write the metadata, mark the volume clean and exit 0.

Examples:
  insitud --listen unix:/tmp/vol.sock --control /tmp/vol.ctl vol.img
  nbdinfo 'nbd+unix:///?socket=/tmp/vol.sock'
  qemu-img info 'nbd+unix:///?socket=/tmp/vol.sock'
  nbdfuse /mnt/vol/disk --unix /tmp/vol.sock

Exit status: 0 clean shutdown, 1 error, 2 invalid command line.
See insitud(8).)";

int Main(int argc, char** argv) {
  CLI::App app{"insitud: serve an insitu compressed volume over NBD.", "insitud"};
  app.set_version_flag("--version", std::string("insitud ") + INSITU_VERSION);
  app.footer(kFooter);
  Args args;
  app.add_option("TARGET", args.target, "Block device or file holding an insitu volume")
      ->required();
  app.add_option("-l,--listen", args.listen,
                 "Where to serve NBD: unix:PATH or tcp:HOST:PORT (repeatable)");
  app.add_option("-e,--export", args.export_name,
                 "Export name; clients asking for the default export (\"\") get it too")
      ->default_str("\"\"");
  app.add_flag("-r,--readonly", args.read_only, "Open the volume read-only; writes get EPERM");
  app.add_option("-c,--control", args.control,
                 "Unix socket (mode 0600) answering \"status\" with live counters as JSON");
  app.add_option(
         "-t,--threads", args.threads,
         "Worker threads; 0 means 4 per usable CPU (at least 4), or at least 16 with direct I/O")
      ->default_val(0)
      ->check(CLI::Range(0, 1024));
  app.add_option("--poll-us", args.poll_us,
                 "Microseconds a connection whose client sends one request at a time polls "
                 "for the next before sleeping; 0 never polls")
      ->default_val(args.poll_us)
      ->check(CLI::Range(0, 1000000));
  app.add_option("--pidfile", args.pidfile, "Write the daemon's process id to this file");
  app.add_option("--io", args.io,
                 "Backing I/O: direct (O_DIRECT), buffered (page cache), or auto: direct on "
                 "block devices, buffered on regular files")
      ->default_val("auto")
      ->check(CLI::IsMember({"auto", "direct", "buffered"}));
  app.add_flag("--no-split", args.no_split,
               "Rewrite a compressed extent whole on every small write into it, instead of "
               "cutting it into pieces around the write (for data that is randomly written, "
               "then rewritten sequentially)");
  app.add_flag("--no-fit", args.no_fit,
               "Never compress a payload again at the codec's tighter level when that would "
               "save a 4 KiB unit of space (saves compression time on writes)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  // Threads share glibc's arenas, at most one per CPU: reader threads,
  // which run their connections' lone writes (libcore/nbd/server.h), end
  // with their connections, and what each freed (its write state, deferred
  // copies) would otherwise stay behind in an arena of its own (peak anon
  // RSS over the bench's runs on a codec-none volume 55 MiB, capped 42).
  mallopt(M_ARENA_MAX, static_cast<int>(std::max(2u, UsableCpus())));

  // Before any thread exists, so that all of them inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  if (args.listen.empty()) {
    std::string spec;
    if (const Status st = DefaultListen(args.target, &spec); !st.ok()) {
      Say(st.message());
      return kExitError;
    }
    args.listen.push_back(spec);
  }

  FileDeviceOptions file_opts;
  file_opts.read_only = args.read_only;
  // A daemon killed a moment ago can hold the lock until the kernel has
  // finished its io_uring requests; a restart should not fail on that.
  file_opts.lock_wait_ms = 5000;
  file_opts.allow_direct = args.io == "direct" || (args.io == "auto" && IsBlockDevice(args.target));
  std::unique_ptr<FileDevice> file;
  if (const Status st = FileDevice::Open(args.target, file_opts, &file); !st.ok()) {
    Say(st.message());  // names the path already
    return kExitError;
  }
  const bool direct_io = file->uses_direct_io();
  const std::string found = ProbeExisting(file.get());
  if (!found.starts_with("an insitu volume")) {
    Say(args.target + ": not an insitu volume" +
        (found.empty() ? "" : " (it holds " + found + ")") + "; create one with insitu format");
    return kExitError;
  }
  OpenOptions open_opts;
  open_opts.read_only = args.read_only;
  open_opts.split_extents = !args.no_split;
  open_opts.fit_units = !args.no_fit;
  open_opts.log = [](const std::string& line) { std::cerr << line + "\n"; };
  std::unique_ptr<InsituVolume> vol;
  if (const Status st = InsituVolume::Open(std::move(file), open_opts, &vol); !st.ok()) {
    Say(args.target + ": " + st.message());
    return kExitError;
  }
  const format::Superblock& sb = vol->superblock();
  std::string codec = CodecName(static_cast<CodecId>(sb.codec));
  if (sb.codec_level != 0) codec += ":" + std::to_string(sb.codec_level);
  const std::string meta = sb.meta_mode == static_cast<uint8_t>(format::MetaMode::kWriteThrough)
                               ? "writethrough"
                               : "writeback";

  NbdServerOptions server_opts;
  server_opts.export_name = args.export_name;
  server_opts.description = "insitu volume (" + codec + ", " + meta + ")";
  server_opts.read_only = args.read_only;
  server_opts.threads = args.threads != 0 ? args.threads : DefaultWorkerThreads(direct_io);
  server_opts.poll_us = args.poll_us;
  server_opts.log = Say;
  NbdServer server(vol.get(), server_opts);
  for (const std::string& spec : args.listen) {
    if (const Status st = server.Listen(spec); !st.ok()) {
      Say("cannot listen on " + spec + ": " + st.message());
      return kExitError;
    }
  }
  const std::vector<std::string> addresses = server.Addresses();

  const auto started = std::chrono::steady_clock::now();
  EventLoop events(&server, [&] {
    const NbdServerCounters c = server.Counters();
    const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::steady_clock::now() - started);
    return nlohmann::json{{"device", args.target},
                          {"export", args.export_name},
                          {"read_only", args.read_only},
                          {"split_extents", !args.no_split},
                          {"fit_units", !args.no_fit},
                          {"listen", addresses},
                          {"superblock", SuperblockToJson(vol->superblock())},
                          {"volume", StatsToJson(vol->Stats())},
                          {"server",
                           {{"connections", c.connections},
                            {"connections_total", c.connections_total},
                            {"inline_readers", c.inline_readers},
                            {"requests_in_flight", c.requests_in_flight},
                            {"requests_total", c.requests_total},
                            {"pool_handoffs", c.pool_handoffs},
                            {"poll_hits", c.poll_hits},
                            {"bytes_read", c.bytes_read},
                            {"bytes_written", c.bytes_written},
                            {"uptime_s", static_cast<uint64_t>(uptime.count())}}}};
  });
  if (const Status st = events.Init(signals, args.control); !st.ok()) {
    Say(st.message());
    return kExitError;
  }
  PidFile pidfile;
  if (!args.pidfile.empty()) {
    if (const Status st = pidfile.Write(args.pidfile); !st.ok()) {
      Say(st.message());
      return kExitError;
    }
  }

  std::string where;
  for (const std::string& a : addresses) where += (where.empty() ? "" : ", ") + a;
  Say("serving " + args.target + " (" + HumanSize(vol->Size()) + ", " + codec + ", " + meta +
      (args.read_only ? ", read-only" : "") + ") on " + where);

  events.Start();
  const Status run = server.Run();
  events.Stop();
  if (!run.ok()) Say("server stopped: " + run.message());
  if (const Status st = vol->Close(); !st.ok()) {
    Say("closing " + args.target + ": " + st.message());
    return kExitError;
  }
  if (!run.ok()) return kExitError;
  Say(std::string("stopped; ") + (args.read_only ? "volume closed" : "volume closed cleanly"));
  return kExitOk;
}

}  // namespace
}  // namespace insitu

int main(int argc, char** argv) { return insitu::Main(argc, argv); }
