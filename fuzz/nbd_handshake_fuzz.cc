// Fuzzes the NBD server as a client sees it: the input is everything a
// client sends on one connection, written to a real NbdServer over a Unix
// socket while its answers are read, so the handshake state machine, the
// option parsers and, after NBD_OPT_GO or NBD_OPT_EXPORT_NAME, the request
// loop, the worker pool and the device calls all run as in insitud.  The
// option parsers are also run directly over the same bytes, which is
// cheap and gives the fuzzer exact feedback on them.
//
// Input: [control][client bytes]
//   control bit 0: send a valid handshake first (flags, STRUCTURED_REPLY,
//                  SET_META_CONTEXT base:allocation, GO), so that the
//                  client bytes are requests
//   control bit 1: serve an insitu volume (on a MemDevice) instead of a
//                  plain MemDevice of an odd size
// The export is reset before each input, so every input replays alike.
//
// Checks beyond "no crash": the server greets first; it finishes with the
// client (answers what it accepted and closes) within 10 s of the client
// closing its side; what the option parsers accept is exactly as long as
// the option.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "libcore/mem_device.h"
#include "libcore/nbd/protocol.h"
#include "libcore/nbd/server.h"
#include "libcore/volume.h"
#include "tests/unit/test_util.h"

namespace {

namespace nbd = insitu::nbd;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kPlainBytes = (1 << 20) + 1536;  // not a multiple of 4 KiB
constexpr uint64_t kVolumeBytes = 4 << 20;          // the smallest volume
constexpr auto kDeadline = std::chrono::seconds(10);

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "nbd_handshake_fuzz: %s\n", what);
  std::abort();
}

void Check(const insitu::Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "nbd_handshake_fuzz: %s: %s\n", what, st.ToString().c_str());
  std::abort();
}

// What the server serves; points at the plain device or at this input's
// volume.  Switched only while no connection is open.
class SwitchDevice : public insitu::BlockDevice {
 public:
  void Set(insitu::BlockDevice* target) { target_ = target; }
  uint64_t Size() const override { return target_->Size(); }
  insitu::Status Read(uint64_t offset, void* buf, size_t len) override {
    return target_->Read(offset, buf, len);
  }
  insitu::Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    return target_->Write(offset, buf, len, fua);
  }
  insitu::Status Flush() override { return target_->Flush(); }
  insitu::Status Discard(uint64_t offset, uint64_t len) override {
    return target_->Discard(offset, len);
  }
  insitu::Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override {
    return target_->WriteZeroes(offset, len, fua);
  }
  insitu::Status GetAllocation(uint64_t offset, uint64_t len,
                               std::vector<insitu::AllocationRun>* runs) override {
    return target_->GetAllocation(offset, len, runs);
  }
  std::string Describe() const override { return "fuzz:" + target_->Describe(); }

 private:
  insitu::BlockDevice* target_ = nullptr;
};

struct Harness {
  std::filesystem::path dir;
  std::string socket_path;
  insitu::MemDevice plain{kPlainBytes};
  std::vector<uint8_t> volume_image;  // a formatted volume holding some data
  SwitchDevice exported;
  std::unique_ptr<insitu::NbdServer> server;
  std::thread runner;
};

Harness* harness = nullptr;

// Read-write, logging nowhere.
insitu::OpenOptions QuietOpen() {
  insitu::OpenOptions o;
  o.log = [](const std::string&) {};
  return o;
}

std::vector<uint8_t> MakeVolumeImage() {
  insitu::MemDevice mem(kVolumeBytes);
  insitu::FormatOptions format;
  format.meta_mode = insitu::format::MetaMode::kWriteThrough;
  Check(insitu::FormatVolume(&mem, format), "formatting the volume");
  std::unique_ptr<insitu::InsituVolume> vol;
  Check(insitu::InsituVolume::Open(std::make_unique<insitu::testing::BorrowedDevice>(&mem),
                                   QuietOpen(), &vol),
        "opening the volume");
  // Data, raw blocks and holes, so that reads and block status meet each.
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(256 << 10);
  insitu::testing::FillData(rng, insitu::testing::DataKind::kMixed, buf.data(), buf.size());
  Check(vol->Write(64 << 10, buf.data(), buf.size(), false), "writing the volume");
  Check(vol->Close(), "closing the volume");
  return mem.contents();
}

// Runs at exit: stops the server as insitud does on SIGTERM, so a hang or
// a sanitizer report in shutdown is a finding too.
void StopServer() {
  harness->server->Shutdown();
  harness->runner.join();
  const std::filesystem::path dir = harness->dir;
  delete harness;
  harness = nullptr;
  std::filesystem::remove_all(dir);
}

void StartServer() {
  harness = new Harness;
  std::string dir = (std::filesystem::temp_directory_path() / "insitu-nbd-fuzz.XXXXXX").string();
  Require(::mkdtemp(dir.data()) != nullptr, "cannot create a directory for the socket");
  harness->dir = dir;
  harness->socket_path = dir + "/nbd.sock";
  harness->volume_image = MakeVolumeImage();
  harness->exported.Set(&harness->plain);
  insitu::NbdServerOptions opts;
  opts.export_name = "fuzz";
  opts.description = "fuzzing export";
  opts.threads = 2;
  harness->server = std::make_unique<insitu::NbdServer>(&harness->exported, opts);
  Check(harness->server->Listen("unix:" + harness->socket_path), "listening");
  harness->runner = std::thread([] { Check(harness->server->Run(), "serving"); });
  std::atexit(StopServer);
}

// ---- the option parsers, directly ------------------------------------------

void CheckOption(uint32_t option, std::span<const uint8_t> data) {
  if (option == nbd::kOptInfo || option == nbd::kOptGo) {
    nbd::InfoRequest req;
    if (!nbd::ParseInfoRequest(data, &req).ok()) return;
    Require(req.export_name.size() <= nbd::kMaxStringLength, "export name too long");
    Require(4 + req.export_name.size() + 2 + 2 * req.info_types.size() == data.size(),
            "info request parsed from other than its bytes");
  } else if (option == nbd::kOptListMetaContext || option == nbd::kOptSetMetaContext) {
    nbd::MetaContextRequest req;
    if (!nbd::ParseMetaContextRequest(data, &req).ok()) return;
    size_t used = 4 + req.export_name.size() + 4;
    for (const std::string& q : req.queries) {
      Require(q.size() <= nbd::kMaxStringLength, "query too long");
      used += 4 + q.size();
    }
    Require(req.export_name.size() <= nbd::kMaxStringLength, "export name too long");
    Require(used == data.size(), "meta context request parsed from other than its bytes");
  }
}

// Walks the client's bytes as the server's handshake loop reads them.
void ParseHandshake(std::span<const uint8_t> in) {
  uint32_t flags;
  if (in.size() < nbd::kClientFlagsSize ||
      !nbd::ParseClientFlags(in.first(nbd::kClientFlagsSize), &flags).ok()) {
    return;
  }
  in = in.subspan(nbd::kClientFlagsSize);
  for (;;) {
    nbd::OptionHeader opt;
    const size_t head = std::min(in.size(), nbd::kOptionHeaderSize);
    const bool parsed = nbd::ParseOptionHeader(in.first(head), &opt).ok();
    if (head < nbd::kOptionHeaderSize) {
      Require(!parsed, "parsed a truncated option header");
      return;
    }
    if (!parsed || opt.length > in.size() - head) return;
    const std::span<const uint8_t> data = in.subspan(head, opt.length);
    CheckOption(opt.option, data);
    if (opt.option == nbd::kOptExportName || opt.option == nbd::kOptGo ||
        opt.option == nbd::kOptAbort) {
      return;
    }
    in = in.subspan(head + opt.length);
  }
}

// ---- the conversation with the server --------------------------------------

void AppendOption(uint32_t option, std::span<const uint8_t> data, std::vector<uint8_t>* out) {
  const auto put = [out](uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put(nbd::kOptionMagic, 8);
  put(option, 4);
  put(data.size(), 4);
  out->insert(out->end(), data.begin(), data.end());
}

// Client flags, STRUCTURED_REPLY, SET_META_CONTEXT base:allocation and GO
// for the default export, as nbdinfo and qemu send them.
std::vector<uint8_t> ValidHandshake() {
  std::vector<uint8_t> out = {0, 0, 0, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes};
  AppendOption(nbd::kOptStructuredReply, {}, &out);
  std::vector<uint8_t> meta = {0, 0, 0, 0, 0, 0,
                               0, 1, 0, 0, 0, static_cast<uint8_t>(nbd::kBaseAllocation.size())};
  meta.insert(meta.end(), nbd::kBaseAllocation.begin(), nbd::kBaseAllocation.end());
  AppendOption(nbd::kOptSetMetaContext, meta, &out);
  const uint8_t go[] = {0, 0, 0, 0, 0, 0};  // default export, no information requests
  AppendOption(nbd::kOptGo, go, &out);
  return out;
}

int RemainingMs(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  Require(left.count() > 0,
          "the server did not finish with a client within 10 s of the client closing its side");
  return static_cast<int>(left.count());
}

// Sends `out` while reading every reply, closes the sending side, and reads
// until the server closes the connection.
void Converse(std::span<const uint8_t> out) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Require(fd >= 0, "cannot create a client socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, harness->socket_path.c_str(), sizeof(addr.sun_path) - 1);
  Require(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
          "cannot connect to the server");
  Require(::fcntl(fd, F_SETFL, O_NONBLOCK) == 0, "cannot make the client socket non-blocking");

  const auto deadline = Clock::now() + kDeadline;
  const auto greeting = nbd::EncodeGreeting(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
  std::vector<uint8_t> start;  // the first bytes the server sent
  bool sending = true;
  uint8_t buf[65536];
  for (;;) {
    if (sending && out.empty()) {
      ::shutdown(fd, SHUT_WR);
      sending = false;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (sending ? POLLOUT : 0)), 0};
    const int ready = ::poll(&p, 1, RemainingMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    Require(ready >= 0, "poll failed");
    if (sending && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        out = out.subspan(static_cast<size_t>(n));
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        out = {};  // the server has closed: what is left cannot be sent
      }
    }
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
      if (n > 0 && start.size() < greeting.size()) {
        start.insert(start.end(), buf, buf + std::min<size_t>(n, greeting.size() - start.size()));
      }
    }
  }
  ::close(fd);
  Require(
      std::equal(start.begin(), start.end(), greeting.begin()) && start.size() == greeting.size(),
      "the server did not greet the client first");
  // The connection's thread ends after the socket is shut down; the
  // export is switched only once no thread can touch it any more.
  while (harness->server->Counters().connections != 0) {
    RemainingMs(deadline);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (harness == nullptr) StartServer();
  const uint8_t control = data[0];
  const std::span<const uint8_t> client(data + 1, size - 1);

  std::vector<uint8_t> stream;
  if (control & 1) stream = ValidHandshake();
  stream.insert(stream.end(), client.begin(), client.end());
  ParseHandshake(stream);

  insitu::MemDevice backing(0);
  std::unique_ptr<insitu::InsituVolume> volume;
  if (control & 2) {
    backing.contents() = harness->volume_image;
    Check(insitu::InsituVolume::Open(std::make_unique<insitu::testing::BorrowedDevice>(&backing),
                                     QuietOpen(), &volume),
          "opening the volume");
    harness->exported.Set(volume.get());
  } else {
    std::fill(harness->plain.contents().begin(), harness->plain.contents().end(), 0);
    harness->exported.Set(&harness->plain);
  }
  Converse(stream);
  if (volume) {
    harness->exported.Set(&harness->plain);
    Check(volume->Close(), "closing the volume");
  }
  return 0;
}
