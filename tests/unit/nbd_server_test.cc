// NbdServer against a real client (libnbd) and against a raw socket that
// sends what no well-behaved client would.
#include "libcore/nbd/server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "libcore/mem_device.h"
#include "libcore/nbd/protocol.h"

namespace insitu {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

// ---- test devices --------------------------------------------------------

// Counts what the server asked of the device.
class RecordingDevice : public MemDevice {
 public:
  using MemDevice::MemDevice;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    (fua ? fua_writes : writes)++;
    return MemDevice::Write(offset, buf, len, fua);
  }
  Status Flush() override {
    flushes++;
    return MemDevice::Flush();
  }
  Status Discard(uint64_t offset, uint64_t len) override {
    discards++;
    return MemDevice::Discard(offset, len);
  }
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override {
    (fua ? fua_zeroes : zeroes)++;
    return MemDevice::WriteZeroes(offset, len, fua);
  }
  std::atomic<int> writes{0}, fua_writes{0}, flushes{0}, discards{0}, zeroes{0}, fua_zeroes{0};
};

// Writes and flushes take as long as the test says.
class SlowWriteDevice : public MemDevice {
 public:
  using MemDevice::MemDevice;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(write_ms.load()));
    return MemDevice::Write(offset, buf, len, fua);
  }
  Status Flush() override {
    std::this_thread::sleep_for(std::chrono::milliseconds(flush_ms.load()));
    return MemDevice::Flush();
  }
  std::atomic<int> write_ms{0}, flush_ms{0};
};

// 1 MiB: data, then a hole reported in 4 KiB pieces (to be merged), then
// zeros that are allocated, then a hole to the end.
class HoleyDevice : public MemDevice {
 public:
  HoleyDevice() : MemDevice(kMiB) {}
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override {
    INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
    runs->clear();
    const uint64_t end = offset + len;
    for (uint64_t pos = offset; pos < end;) {
      AllocationRun run;
      uint64_t limit;
      if (pos < 64 * 1024) {
        limit = 64 * 1024;
      } else if (pos < 192 * 1024) {
        limit = (pos / 4096 + 1) * 4096;
        run.hole = run.zero = true;
      } else if (pos < 256 * 1024) {
        limit = 256 * 1024;
        run.zero = true;
      } else {
        limit = kMiB;
        run.hole = run.zero = true;
      }
      run.length = std::min(limit, end) - pos;
      runs->push_back(run);
      pos += run.length;
    }
    return Status::OK();
  }
};

// Holds chosen requests inside the device until the test opens the gate,
// so that a test can have requests in flight for as long as it needs.
class GatedDevice : public MemDevice {
 public:
  using MemDevice::MemDevice;
  GatedDevice(uint64_t size, uint64_t gate_reads, uint64_t hold_reads)
      : MemDevice(size), gate_reads_at(gate_reads), hold_reads_at(hold_reads) {}
  Status Read(uint64_t offset, void* buf, size_t len) override {
    if (gate_reads_at == offset) Wait();
    if (hold_reads_at == offset) Hold();
    return MemDevice::Read(offset, buf, len);
  }
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    if (gate_writes) Wait();
    return MemDevice::Write(offset, buf, len, fua);
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Lets one waiting (or the next) gated call through.
  void Pass() {
    std::lock_guard<std::mutex> lock(mu_);
    passes_++;
    cv_.notify_all();
  }
  bool WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return entered_ >= n; });
  }
  bool WaitHeld(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return held_ >= n; });
  }
  uint64_t gate_reads_at = UINT64_MAX;  // set before serving
  uint64_t hold_reads_at = UINT64_MAX;  // these wait for Open() alone
  bool gate_writes = false;

 private:
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    entered_++;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_ || passes_ > 0; });
    if (!open_) passes_--;
  }
  void Hold() {
    std::unique_lock<std::mutex> lock(mu_);
    held_++;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  int held_ = 0;
  int passes_ = 0;
  bool open_ = false;
};

// Opens the gate when the test ends, also on a failed assertion, so that
// the harness's shutdown is not left waiting for a gated request.  Declare
// it after the harness: it must run first.
class OpenAtExit {
 public:
  explicit OpenAtExit(GatedDevice* dev) : dev_(dev) {}
  OpenAtExit(const OpenAtExit&) = delete;
  OpenAtExit& operator=(const OpenAtExit&) = delete;
  ~OpenAtExit() { dev_->Open(); }

 private:
  GatedDevice* dev_;
};

// ---- harness -------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/insitu-nbd-test-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p ? p : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct NbdCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Nbd = std::unique_ptr<nbd_handle, NbdCloser>;

struct ConnectOptions {
  std::string export_name{};
  bool structured = true;
  bool meta = true;
  bool strict = true;  // false: let requests the client knows are bad reach the server
};

// Runs a server on a Unix socket in a temporary directory.
class Harness {
 public:
  explicit Harness(BlockDevice* dev, NbdServerOptions opts = {})
      : sock(dir.path() + "/nbd.sock"), server(dev, WithDefaults(std::move(opts))) {
    const Status st = server.Listen("unix:" + sock);
    EXPECT_TRUE(st.ok()) << st.ToString();
    thread = std::thread([this] {
      run_status = server.Run();
      run_returned = true;
    });
  }
  ~Harness() { Stop(); }

  void Stop() {
    if (!thread.joinable()) return;
    server.Shutdown();
    thread.join();
    EXPECT_TRUE(run_status.ok()) << run_status.ToString();
  }

  Nbd Connect(const ConnectOptions& o = {}) {
    Nbd h(nbd_create());
    if (!h) return nullptr;
    nbd_set_export_name(h.get(), o.export_name.c_str());
    nbd_set_request_structured_replies(h.get(), o.structured);
    if (o.meta) nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (!o.strict) nbd_set_strict_mode(h.get(), 0);
    nbd_set_full_info(h.get(), true);
    if (nbd_connect_unix(h.get(), sock.c_str()) != 0) return nullptr;
    return h;
  }

  // A fresh client can still connect and read: the server survived.
  void ExpectHealthy() {
    Nbd h = Connect();
    ASSERT_NE(h, nullptr) << nbd_get_error();
    char buf[512];
    EXPECT_EQ(nbd_pread(h.get(), buf, sizeof(buf), 0, 0), 0) << nbd_get_error();
  }

  TempDir dir;
  std::string sock;
  NbdServer server;
  std::thread thread;
  Status run_status;
  std::atomic<bool> run_returned{false};

 private:
  static NbdServerOptions WithDefaults(NbdServerOptions o) {
    if (o.threads == 0) o.threads = 4;
    return o;
  }
};

// Completion callbacks for libnbd's asynchronous calls.
struct Completion {
  int index = 0;
  int error = -1;
  bool done = false;
  std::vector<int>* order = nullptr;
};

int OnComplete(void* user_data, int* error) {
  auto* c = static_cast<Completion*>(user_data);
  c->done = true;
  c->error = *error;
  if (c->order) c->order->push_back(c->index);
  return 1;  // retire the command
}

nbd_completion_callback Callback(Completion* c) {
  nbd_completion_callback cb{};
  cb.callback = OnComplete;
  cb.user_data = c;
  return cb;
}

bool PollUntil(nbd_handle* h, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (nbd_poll(h, 1000) < 0) return done();
  }
  return true;
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// ---- handshake -----------------------------------------------------------

TEST(NbdServerTest, HandshakeAdvertisesSizeFlagsAndBlockSizes) {
  MemDevice dev(8 * kMiB);
  NbdServerOptions opts;
  opts.export_name = "vol";
  opts.description = "test volume";
  Harness harness(&dev, opts);
  Nbd h = harness.Connect({.export_name = "vol"});
  ASSERT_NE(h, nullptr) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(h.get()), int64_t(8 * kMiB));
  EXPECT_EQ(nbd_is_read_only(h.get()), 0);
  EXPECT_EQ(nbd_can_flush(h.get()), 1);
  EXPECT_EQ(nbd_can_fua(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 1);
  EXPECT_EQ(nbd_can_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_cache(h.get()), 1);
  EXPECT_EQ(nbd_can_multi_conn(h.get()), 1);
  EXPECT_EQ(nbd_can_df(h.get()), 0);
  EXPECT_EQ(nbd_can_fast_zero(h.get()), 0);
  EXPECT_EQ(nbd_can_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h.get()), 1);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_MINIMUM), 1);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_PREFERRED), 4096);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM), 32 << 20);
  char* name = nbd_get_canonical_export_name(h.get());
  ASSERT_NE(name, nullptr);
  EXPECT_STREQ(name, "vol");
  free(name);
  char* desc = nbd_get_export_description(h.get());
  ASSERT_NE(desc, nullptr);
  EXPECT_STREQ(desc, "test volume");
  free(desc);
}

TEST(NbdServerTest, EmptyNameSelectsTheExportAndUnknownNamesFail) {
  MemDevice dev(kMiB);
  NbdServerOptions opts;
  opts.export_name = "vol";
  Harness harness(&dev, opts);
  Nbd by_default = harness.Connect();
  ASSERT_NE(by_default, nullptr) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(by_default.get()), int64_t(kMiB));
  EXPECT_EQ(harness.Connect({.export_name = "nope"}), nullptr);
  harness.ExpectHealthy();
}

int CollectExport(void* user_data, const char* name, const char* description) {
  static_cast<std::vector<std::pair<std::string, std::string>>*>(user_data)->emplace_back(
      name, description);
  return 0;
}

int CollectContext(void* user_data, const char* name) {
  static_cast<std::vector<std::string>*>(user_data)->emplace_back(name);
  return 0;
}

TEST(NbdServerTest, ListsExportsAndContextsInOptionMode) {
  MemDevice dev(kMiB);
  NbdServerOptions opts;
  opts.export_name = "vol";
  opts.description = "the volume";
  Harness harness(&dev, opts);
  Nbd h(nbd_create());
  ASSERT_NE(h, nullptr);
  ASSERT_EQ(nbd_set_opt_mode(h.get(), true), 0);
  ASSERT_EQ(nbd_connect_unix(h.get(), harness.sock.c_str()), 0) << nbd_get_error();

  std::vector<std::pair<std::string, std::string>> exports;
  nbd_list_callback list_cb{};
  list_cb.callback = CollectExport;
  list_cb.user_data = &exports;
  ASSERT_GE(nbd_opt_list(h.get(), list_cb), 0) << nbd_get_error();
  ASSERT_EQ(exports.size(), 1u);
  EXPECT_EQ(exports[0].first, "vol");
  EXPECT_EQ(exports[0].second, "the volume");

  std::vector<std::string> contexts;
  nbd_context_callback ctx_cb{};
  ctx_cb.callback = CollectContext;
  ctx_cb.user_data = &contexts;
  ASSERT_GE(nbd_opt_list_meta_context(h.get(), ctx_cb), 0) << nbd_get_error();
  EXPECT_EQ(contexts, std::vector<std::string>{"base:allocation"});

  nbd_set_export_name(h.get(), "nope");
  EXPECT_EQ(nbd_opt_info(h.get()), -1);
  nbd_set_export_name(h.get(), "vol");
  ASSERT_EQ(nbd_opt_info(h.get()), 0) << nbd_get_error();
  ASSERT_EQ(nbd_opt_go(h.get()), 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(h.get()), int64_t(kMiB));
}

// ---- data path -----------------------------------------------------------

TEST(NbdServerTest, ReadWriteRoundTripsIncludingUnalignedAndMaximumSize) {
  MemDevice dev(64 * kMiB);
  Harness harness(&dev);
  for (bool structured : {true, false}) {
    Nbd h = harness.Connect({.structured = structured, .meta = structured});
    ASSERT_NE(h, nullptr) << nbd_get_error();
    const auto data = RandomBytes(10001, structured);
    ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 3, 0), 0) << nbd_get_error();
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 3, 0), 0) << nbd_get_error();
    EXPECT_EQ(back, data);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), dev.contents().begin() + 3));

    const auto big = RandomBytes(NbdServer::kMaxPayload, 7 + structured);
    ASSERT_EQ(nbd_pwrite(h.get(), big.data(), big.size(), 16 * kMiB, 0), 0) << nbd_get_error();
    std::vector<uint8_t> big_back(big.size());
    ASSERT_EQ(nbd_pread(h.get(), big_back.data(), big_back.size(), 16 * kMiB, 0), 0);
    EXPECT_EQ(big_back, big);
  }
}

TEST(NbdServerTest, FuaFlushTrimZeroAndCacheReachTheDevice) {
  RecordingDevice dev(4 * kMiB);
  Harness harness(&dev);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  const auto data = RandomBytes(8192, 1);
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 0, LIBNBD_CMD_FLAG_FUA), 0);
  EXPECT_EQ(dev.fua_writes.load(), 1);
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 8192, 0), 0);
  EXPECT_EQ(dev.writes.load(), 1);
  ASSERT_EQ(nbd_flush(h.get(), 0), 0);
  EXPECT_EQ(dev.flushes.load(), 1);

  ASSERT_EQ(nbd_trim(h.get(), 4096, 0, 0), 0);
  EXPECT_EQ(dev.discards.load(), 1);
  ASSERT_EQ(nbd_trim(h.get(), 4096, 4096, LIBNBD_CMD_FLAG_FUA), 0);
  EXPECT_EQ(dev.discards.load(), 2);
  EXPECT_EQ(dev.flushes.load(), 2);  // a trim with FUA is followed by a flush
  std::vector<uint8_t> back(8192);
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 0, 0), 0);
  EXPECT_EQ(back, std::vector<uint8_t>(8192, 0));

  // MemDevice may discard by writing zeros, so count from here.
  const int zeroes = dev.zeroes.load();
  ASSERT_EQ(nbd_zero(h.get(), 8192, 8192, LIBNBD_CMD_FLAG_NO_HOLE), 0);
  ASSERT_EQ(nbd_zero(h.get(), 3 * kMiB, 0, LIBNBD_CMD_FLAG_FUA), 0);
  EXPECT_EQ(dev.zeroes.load(), zeroes + 1);
  EXPECT_EQ(dev.fua_zeroes.load(), 1);
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 8192, 0), 0);
  EXPECT_EQ(back, std::vector<uint8_t>(8192, 0));

  ASSERT_EQ(nbd_cache(h.get(), kMiB, 0, 0), 0) << nbd_get_error();
}

struct Extents {
  std::vector<uint32_t> entries;  // length, flags, length, flags...
};

int CollectExtents(void* user_data, const char* context, uint64_t, uint32_t* entries,
                   size_t nr_entries, int*) {
  if (std::string(context) == LIBNBD_CONTEXT_BASE_ALLOCATION) {
    static_cast<Extents*>(user_data)->entries.assign(entries, entries + nr_entries);
  }
  return 0;
}

std::vector<uint32_t> BlockStatus(nbd_handle* h, uint64_t len, uint64_t offset, uint32_t flags) {
  Extents extents;
  nbd_extent_callback cb{};
  cb.callback = CollectExtents;
  cb.user_data = &extents;
  EXPECT_EQ(nbd_block_status(h, len, offset, cb, flags), 0) << nbd_get_error();
  return extents.entries;
}

TEST(NbdServerTest, BlockStatusReportsDataHolesAndZeros) {
  MemDevice plain(kMiB);
  {
    Harness harness(&plain);
    Nbd h = harness.Connect();
    ASSERT_NE(h, nullptr) << nbd_get_error();
    EXPECT_EQ(BlockStatus(h.get(), kMiB, 0, 0), (std::vector<uint32_t>{uint32_t(kMiB), 0}));
  }
  HoleyDevice holey;
  Harness harness(&holey);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  const uint32_t hz = nbd::kStateHole | nbd::kStateZero;
  EXPECT_EQ(BlockStatus(h.get(), kMiB, 0, 0),
            (std::vector<uint32_t>{65536, 0, 131072, hz, 65536, nbd::kStateZero, 786432, hz}));
  EXPECT_EQ(BlockStatus(h.get(), kMiB, 0, LIBNBD_CMD_FLAG_REQ_ONE),
            (std::vector<uint32_t>{65536, 0}));
  EXPECT_EQ(BlockStatus(h.get(), 200000, 100000, 0),
            (std::vector<uint32_t>{96608, hz, 65536, nbd::kStateZero, 37856, hz}));
  EXPECT_EQ(BlockStatus(h.get(), 8192, 65536, LIBNBD_CMD_FLAG_REQ_ONE),
            (std::vector<uint32_t>{8192, hz}));
}

TEST(NbdServerTest, BlockStatusNeedsTheContext) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  Nbd h = harness.Connect({.meta = false, .strict = false});
  ASSERT_NE(h, nullptr) << nbd_get_error();
  nbd_extent_callback cb{};
  cb.callback = CollectExtents;
  Extents extents;
  cb.user_data = &extents;
  EXPECT_EQ(nbd_block_status(h.get(), 4096, 0, cb, 0), -1);
  char buf[512];
  EXPECT_EQ(nbd_pread(h.get(), buf, sizeof(buf), 0, 0), 0) << nbd_get_error();
}

TEST(NbdServerTest, ManyConcurrentCommandsComplete) {
  MemDevice dev(4 * kMiB);
  Harness harness(&dev);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  constexpr int kCount = 512;
  std::vector<std::vector<uint8_t>> data(kCount);
  std::vector<Completion> writes(kCount), reads(kCount);
  std::vector<std::vector<uint8_t>> back(kCount, std::vector<uint8_t>(4096));
  for (int i = 0; i < kCount; i++) {
    data[i] = RandomBytes(4096, 100 + i);
    ASSERT_GE(
        nbd_aio_pwrite(h.get(), data[i].data(), 4096, uint64_t(i) * 8192, Callback(&writes[i]), 0),
        1)
        << nbd_get_error();
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == 0; }));
  for (int i = 0; i < kCount; i++) {
    EXPECT_TRUE(writes[i].done);
    EXPECT_EQ(writes[i].error, 0);
    ASSERT_GE(
        nbd_aio_pread(h.get(), back[i].data(), 4096, uint64_t(i) * 8192, Callback(&reads[i]), 0),
        1);
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == 0; }));
  for (int i = 0; i < kCount; i++) {
    EXPECT_EQ(reads[i].error, 0);
    EXPECT_EQ(back[i], data[i]) << "block " << i;
  }
  // A worker counts its request finished just after sending the reply, so
  // the client may see the last reply a moment before the counter drops.
  for (int i = 0; i < 500 && harness.server.Counters().requests_in_flight != 0; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const NbdServerCounters c = harness.server.Counters();
  EXPECT_EQ(c.connections, 1u);
  EXPECT_EQ(c.requests_in_flight, 0u);
  EXPECT_EQ(c.requests_total, 2u * kCount);
  EXPECT_EQ(c.bytes_written, 4096u * kCount);
  EXPECT_EQ(c.bytes_read, 4096u * kCount);
}

// Pipelined writes of every size class, so payloads arrive buffered,
// straight into their buffers, split between the two, and right behind a
// large one (whose header the reader takes with a small receive): every
// byte must land where it was sent.
TEST(NbdServerTest, PipelinedWritesOfMixedSizesLandIntact) {
  MemDevice dev(16 * kMiB);
  Harness harness(&dev);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  const size_t sizes[] = {
      1,     512,       4096, 16383,    16384,     16385, 128 << 10, 4096, (128 << 10) + 7,
      20000, 256 << 10, 1,    32 << 10, (1 << 20), 3,     64 << 10,  4096, (256 << 10) - 1};
  std::vector<std::vector<uint8_t>> data;
  std::vector<uint64_t> offsets;
  std::vector<Completion> writes(std::size(sizes));
  uint64_t off = 0;
  for (size_t i = 0; i < std::size(sizes); i++) {
    data.push_back(RandomBytes(sizes[i], 700 + i));
    offsets.push_back(off);
    ASSERT_GE(nbd_aio_pwrite(h.get(), data[i].data(), sizes[i], off, Callback(&writes[i]), 0), 1)
        << nbd_get_error();
    off += sizes[i] + 100;  // a gap keeps the writes disjoint whatever their order
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == 0; }));
  for (size_t i = 0; i < std::size(sizes); i++) {
    EXPECT_EQ(writes[i].error, 0) << "write " << i;
    std::vector<uint8_t> back(sizes[i]);
    ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), offsets[i], 0), 0) << nbd_get_error();
    EXPECT_EQ(back, data[i]) << "write " << i << " of " << sizes[i] << " bytes";
  }
}

TEST(NbdServerTest, RepliesComeInCompletionOrder) {
  GatedDevice dev(kMiB);
  dev.gate_reads_at = 0;
  Harness harness(&dev);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  std::vector<int> order;
  std::vector<Completion> done(33);
  std::vector<std::vector<uint8_t>> bufs(33, std::vector<uint8_t>(4096));
  for (int i = 0; i < 33; i++) {
    done[i].index = i;
    done[i].order = &order;
  }
  ASSERT_GE(nbd_aio_pread(h.get(), bufs[0].data(), 4096, 0, Callback(&done[0]), 0), 1);
  ASSERT_TRUE(dev.WaitEntered(1));
  for (int i = 1; i < 33; i++) {
    ASSERT_GE(
        nbd_aio_pread(h.get(), bufs[i].data(), 4096, uint64_t(i) * 4096, Callback(&done[i]), 0), 1);
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return order.size() == 32; }));
  EXPECT_FALSE(done[0].done);  // still held by the device
  dev.Open();
  ASSERT_TRUE(PollUntil(h.get(), [&] { return done[0].done; }));
  EXPECT_EQ(order.back(), 0);
  EXPECT_EQ(done[0].error, 0);
}

// Runs reads on a server with one worker over a device that blocks reads at
// offset 0.  reads[0] and reads[leave_first] must read offset 0: the first
// holds the worker while the client queues the rest behind it, then is let
// through, and the worker runs on until it blocks in reads[leave_first].
// The replies of the reads before that one must have left by then, and
// none after it.  A read held until the end goes first: as the
// connection's only request it runs on the reader, and the reads behind it
// go to the worker.
struct GatedRead {
  uint64_t offset;
  size_t len;
};

// A server with one worker over a device that gates reads at offset 0 and
// holds those at hold_reads_at until Open().
struct OneWorkerOverGatedReads {
  explicit OneWorkerOverGatedReads(uint64_t hold_reads_at = UINT64_MAX)
      : dev(kMiB, 0, hold_reads_at), harness(&dev, OneWorker()), open_at_exit(&dev) {}
  static NbdServerOptions OneWorker() {
    NbdServerOptions opts;
    opts.threads = 1;
    return opts;
  }
  GatedDevice dev;
  Harness harness;
  OpenAtExit open_at_exit;  // first to go: nothing stays blocked
};

void ExpectRepliesBeforeTheSecondGate(const std::vector<GatedRead>& reads, size_t leave_first) {
  OneWorkerOverGatedReads server(kMiB - 4096);
  GatedDevice& dev = server.dev;
  Nbd h = server.harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  Completion held;
  std::vector<uint8_t> held_buf(4096);
  ASSERT_GE(nbd_aio_pread(h.get(), held_buf.data(), 4096, kMiB - 4096, Callback(&held), 0), 1);
  ASSERT_TRUE(dev.WaitHeld(1));
  std::vector<Completion> done(reads.size());
  std::vector<std::vector<uint8_t>> bufs;
  for (const GatedRead& r : reads) bufs.emplace_back(r.len);
  for (size_t i = 0; i < reads.size(); i++) {
    ASSERT_GE(nbd_aio_pread(h.get(), bufs[i].data(), reads[i].len, reads[i].offset,
                            Callback(&done[i]), 0),
              1);
    if (i == 0) {
      ASSERT_TRUE(dev.WaitEntered(1));
    }
  }
  // Give the reader time to queue the rest behind the busy worker (were it
  // slower, the worker would take them one by one: the same replies).
  for (int i = 0; i < 3; i++) nbd_poll(h.get(), 50);
  dev.Pass();
  const auto done_from = [&](size_t from, size_t to) {
    for (size_t i = from; i < to; i++) {
      if (!done[i].done) return false;
    }
    return true;
  };
  ASSERT_TRUE(PollUntil(h.get(), [&] { return done_from(0, leave_first); }));
  ASSERT_TRUE(dev.WaitEntered(2));
  for (size_t i = leave_first; i < reads.size(); i++) EXPECT_FALSE(done[i].done) << "read " << i;
  EXPECT_FALSE(held.done);
  dev.Open();
  ASSERT_TRUE(
      PollUntil(h.get(), [&] { return done_from(leave_first, reads.size()) && held.done; }));
  for (const Completion& c : done) EXPECT_EQ(c.error, 0);
  EXPECT_EQ(held.error, 0);
}

// Replies wait for the connection's queued requests to start (so a client
// with many requests in flight is woken once per batch), never for one to
// finish: the second read's reply, and the first's held with it, leave
// when the worker starts the third.
TEST(NbdServerTest, HeldRepliesLeaveWhenTheLastQueuedRequestStarts) {
  ExpectRepliesBeforeTheSecondGate({{0, 4096}, {4096, 4096}, {0, 4096}}, 2);
}

// A reply with a large read does not wait for queued requests: it leaves
// at once, with the replies held before it, while one more read is still
// queued behind the gated one.
TEST(NbdServerTest, LargeReadRepliesDoNotWait) {
  ExpectRepliesBeforeTheSecondGate({{0, 4096}, {65536, 65536}, {0, 4096}, {8192, 4096}}, 2);
}

// One worker over gated reads, and a connection `a` with two reads blocked
// at the gate: the first on a's reader (a's first request, so surely
// alone), the second, read by the standby meanwhile, on the worker.
struct BlockedWorker {
  BlockedWorker() {
    EXPECT_NE(a, nullptr) << nbd_get_error();
    EXPECT_GE(nbd_aio_pread(a.get(), bufs[0].data(), 4096, 0, Callback(&done[0]), 0), 1);
    EXPECT_TRUE(server.dev.WaitEntered(1));
    EXPECT_GE(nbd_aio_pread(a.get(), bufs[1].data(), 4096, 0, Callback(&done[1]), 0), 1);
    EXPECT_TRUE(server.dev.WaitEntered(2));
  }
  // Both of a's reads are still blocked, two readers run requests; then
  // the gate opens and they complete.
  void ExpectBlockedThenOpen() {
    EXPECT_FALSE(done[0].done || done[1].done);
    EXPECT_EQ(server.harness.server.Counters().inline_readers, 2u);
    server.dev.Open();
    EXPECT_TRUE(PollUntil(a.get(), [&] { return done[0].done && done[1].done; }));
  }
  OneWorkerOverGatedReads server;
  Nbd a = server.harness.Connect();
  std::vector<std::vector<uint8_t>> bufs{2, std::vector<uint8_t>(4096)};
  std::vector<Completion> done{2};
};

// A connection's only read runs on its reader, not on a worker: with the
// one worker blocked, another client's read still completes.
TEST(NbdServerTest, ALoneReadNeedsNoWorker) {
  BlockedWorker blocked;
  Nbd b = blocked.server.harness.Connect();
  ASSERT_NE(b, nullptr) << nbd_get_error();
  Completion read_b;
  std::vector<uint8_t> back(4096, 0xaa);
  ASSERT_GE(nbd_aio_pread(b.get(), back.data(), 4096, 8192, Callback(&read_b), 0), 1);
  ASSERT_TRUE(PollUntil(b.get(), [&] { return read_b.done; }));
  EXPECT_EQ(read_b.error, 0);
  EXPECT_EQ(back, std::vector<uint8_t>(4096, 0));
  blocked.ExpectBlockedThenOpen();
}

// A lone write runs on the reader too: with the one worker blocked, a new
// connection's first request, a write, completes.
TEST(NbdServerTest, ALoneWriteNeedsNoWorker) {
  BlockedWorker blocked;
  Nbd b = blocked.server.harness.Connect();
  ASSERT_NE(b, nullptr) << nbd_get_error();
  const std::vector<uint8_t> written(4096, 0x5c);
  Completion write_b;
  ASSERT_GE(nbd_aio_pwrite(b.get(), written.data(), 4096, 8192, Callback(&write_b), 0), 1);
  ASSERT_TRUE(PollUntil(b.get(), [&] { return write_b.done; }));
  EXPECT_EQ(write_b.error, 0);
  blocked.ExpectBlockedThenOpen();
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(blocked.server.dev.Read(8192, back.data(), back.size()).ok());
  EXPECT_EQ(back, written);
}

// While it lives, the process can open no descriptor: the soft
// RLIMIT_NOFILE sits just above the highest one open, and the free numbers
// below it are taken (by /dev/null) until the destructor gives them back.
class NoNewDescriptors {
 public:
  NoNewDescriptors() {
    int highest = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      highest = std::max(highest, std::stoi(e.path().filename().string()));
    }
    EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &saved_), 0);
    rlimit low = saved_;
    low.rlim_cur = static_cast<rlim_t>(highest) + 1;
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) taken_.push_back(fd);
    EXPECT_EQ(errno, EMFILE);
  }
  NoNewDescriptors(const NoNewDescriptors&) = delete;
  NoNewDescriptors& operator=(const NoNewDescriptors&) = delete;
  ~NoNewDescriptors() {
    for (int fd : taken_) ::close(fd);
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &saved_), 0);
  }

 private:
  rlimit saved_{};
  std::vector<int> taken_;
};

// A reader that cannot set up its standby (no descriptors for its epoll
// and eventfd) hands its lone read to the pool and goes on reading: a
// second read completes while the first is held in the device.  Run on
// the reader without a standby, the first would keep the second unread.
TEST(NbdServerTest, ALoneReadWithoutAStandbyGoesToThePool) {
  GatedDevice dev(kMiB);
  dev.gate_reads_at = 0;
  NbdServerOptions opts;
  opts.threads = 2;
  Harness harness(&dev, opts);
  OpenAtExit open_at_exit(&dev);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  std::vector<std::vector<uint8_t>> bufs(2, std::vector<uint8_t>(4096, 0xaa));
  std::vector<Completion> done(2);
  {
    NoNewDescriptors no_fds;
    ASSERT_GE(nbd_aio_pread(h.get(), bufs[0].data(), 4096, 0, Callback(&done[0]), 0), 1);
    ASSERT_TRUE(dev.WaitEntered(1));
    ASSERT_GE(nbd_aio_pread(h.get(), bufs[1].data(), 4096, 8192, Callback(&done[1]), 0), 1);
    ASSERT_TRUE(PollUntil(h.get(), [&] { return done[1].done; }));
    EXPECT_EQ(done[1].error, 0);
    EXPECT_FALSE(done[0].done);
    EXPECT_EQ(harness.server.Counters().inline_readers, 0u);  // the permit was given back
  }
  dev.Open();
  ASSERT_TRUE(PollUntil(h.get(), [&] { return done[0].done; }));
  EXPECT_EQ(done[0].error, 0);
  EXPECT_EQ(bufs, std::vector<std::vector<uint8_t>>(2, std::vector<uint8_t>(4096, 0)));
  // With descriptors back, the connection still serves; so does a new one.
  std::vector<uint8_t> back(4096, 0xaa);
  EXPECT_EQ(nbd_pread(h.get(), back.data(), back.size(), 4096, 0), 0) << nbd_get_error();
  harness.ExpectHealthy();
}

TEST(NbdServerTest, ConnectionsShareTheDevice) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  Nbd a = harness.Connect();
  Nbd b = harness.Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const auto data = RandomBytes(4096, 9);
  ASSERT_EQ(nbd_pwrite(a.get(), data.data(), data.size(), 4096, 0), 0);
  ASSERT_EQ(nbd_flush(a.get(), 0), 0);
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(nbd_pread(b.get(), back.data(), back.size(), 4096, 0), 0);
  EXPECT_EQ(back, data);
  EXPECT_EQ(harness.server.Counters().connections, 2u);
  a.reset();
  b.reset();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (harness.server.Counters().connections != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(harness.server.Counters().connections, 0u);
  EXPECT_EQ(harness.server.Counters().connections_total, 2u);
}

// ---- errors --------------------------------------------------------------

TEST(NbdServerTest, ReadOnlyExportRejectsWritesWithEperm) {
  MemDevice dev(kMiB);
  NbdServerOptions opts;
  opts.read_only = true;
  Harness harness(&dev, opts);
  Nbd h = harness.Connect({.strict = false});
  ASSERT_NE(h, nullptr) << nbd_get_error();
  EXPECT_EQ(nbd_is_read_only(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 0);
  EXPECT_EQ(nbd_can_zero(h.get()), 0);
  char buf[4096] = {1};
  EXPECT_EQ(nbd_pwrite(h.get(), buf, sizeof(buf), 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
  EXPECT_EQ(nbd_trim(h.get(), 4096, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
  EXPECT_EQ(nbd_zero(h.get(), 4096, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
  EXPECT_EQ(nbd_pread(h.get(), buf, sizeof(buf), 0, 0), 0);
  EXPECT_EQ(nbd_flush(h.get(), 0), 0);
  EXPECT_EQ(buf[0], 0);
}

TEST(NbdServerTest, OutOfRangeRequestsFailAndTheConnectionLivesOn) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  for (bool structured : {true, false}) {
    Nbd h = harness.Connect({.structured = structured, .meta = structured, .strict = false});
    ASSERT_NE(h, nullptr) << nbd_get_error();
    std::vector<uint8_t> buf(100);
    EXPECT_EQ(nbd_pread(h.get(), buf.data(), buf.size(), kMiB - 10, 0), -1);
    EXPECT_EQ(nbd_get_errno(), EINVAL);
    EXPECT_EQ(nbd_pwrite(h.get(), buf.data(), buf.size(), kMiB - 10, 0), -1);
    EXPECT_EQ(nbd_get_errno(), ENOSPC);
    EXPECT_EQ(nbd_trim(h.get(), 8192, kMiB - 4096, 0), -1);
    EXPECT_EQ(nbd_get_errno(), EINVAL);
    EXPECT_EQ(nbd_pread(h.get(), buf.data(), buf.size(), 0, LIBNBD_CMD_FLAG_DF), -1);
    EXPECT_EQ(nbd_get_errno(), EINVAL);
    EXPECT_EQ(nbd_pread(h.get(), buf.data(), buf.size(), kMiB - 100, 0), 0) << nbd_get_error();
  }
}

// A client that speaks raw bytes, for traffic no real client sends.
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    const timeval timeout{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  RawClient& U16(uint16_t v) { return Put(v, 2); }
  RawClient& U32(uint32_t v) { return Put(v, 4); }
  RawClient& U64(uint64_t v) { return Put(v, 8); }
  RawClient& Bytes(const std::vector<uint8_t>& b) {
    out_.insert(out_.end(), b.begin(), b.end());
    return *this;
  }
  bool Flush() {
    const bool ok = ::send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL) == ssize_t(out_.size());
    out_.clear();
    return ok;
  }
  bool Read(size_t n, std::vector<uint8_t>* in) {
    in->resize(n);
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::recv(fd_, in->data() + got, n - got, 0);
      if (r <= 0) return false;
      got += size_t(r);
    }
    return true;
  }
  uint64_t ReadBig(size_t n) {
    std::vector<uint8_t> in;
    if (!Read(n, &in)) return UINT64_MAX;
    uint64_t v = 0;
    for (uint8_t b : in) v = (v << 8) | b;
    return v;
  }
  // True when the server closed the connection (rather than timing out).
  bool ClosedByServer() {
    uint8_t b;
    ssize_t r;
    while ((r = ::recv(fd_, &b, 1, 0)) > 0) {
    }
    return r == 0 || errno == ECONNRESET;
  }
  bool ReadGreeting() {
    return ReadBig(8) == nbd::kGreetingMagic && ReadBig(8) == nbd::kOptionMagic && ReadBig(2) == 3;
  }
  // Reads one option reply; returns its type, or 0 on a broken stream.
  uint32_t ReadOptionReply(uint32_t option) {
    if (ReadBig(8) != nbd::kOptionReplyMagic || ReadBig(4) != option) return 0;
    const uint32_t type = uint32_t(ReadBig(4));
    std::vector<uint8_t> data;
    return Read(size_t(ReadBig(4)), &data) ? type : 0;
  }
  // Old-style entry into transmission with NBD_OPT_EXPORT_NAME.
  bool EnterTransmission() {
    if (!ReadGreeting() || !U32(3).U64(nbd::kOptionMagic).U32(nbd::kOptExportName).U32(0).Flush()) {
      return false;
    }
    return ReadBig(8) == kMiB && ReadBig(2) != UINT64_MAX;
  }
  RawClient& Request(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                     uint32_t len) {
    return U32(nbd::kRequestMagic).U16(flags).U16(type).U64(cookie).U64(offset).U32(len);
  }
  // Reads a simple reply; returns its error, or UINT32_MAX on a broken stream.
  uint32_t ReadSimpleReply(uint64_t cookie) {
    if (ReadBig(4) != nbd::kSimpleReplyMagic) return UINT32_MAX;
    const uint32_t error = uint32_t(ReadBig(4));
    return ReadBig(8) == cookie ? error : UINT32_MAX;
  }

 private:
  RawClient& Put(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) out_.push_back(uint8_t(v >> (8 * i)));
    return *this;
  }
  int fd_ = -1;
  bool connected_ = false;
  std::vector<uint8_t> out_;
};

TEST(NbdServerTest, SurvivesBrokenHandshakes) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  {
    RawClient c(harness.sock);  // unknown client flags
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(c.U32(0xffffffff).Flush());
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);  // garbage instead of an option
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(c.U32(3).Bytes(RandomBytes(1000, 3)).Flush());
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);  // truncated, then gone
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(c.U16(0).Flush());
  }
  {
    RawClient c(harness.sock);  // connects and goes away at once
    ASSERT_TRUE(c.connected());
  }
  {
    RawClient c(harness.sock);  // unknown option, oversized option, STARTTLS, then a session
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(c.U32(1).U64(nbd::kOptionMagic).U32(77).U32(0).Flush());
    EXPECT_EQ(c.ReadOptionReply(77), nbd::kRepErrUnsup);
    ASSERT_TRUE(c.U64(nbd::kOptionMagic)
                    .U32(nbd::kOptInfo)
                    .U32(1 << 20)
                    .Bytes(std::vector<uint8_t>(1 << 20))
                    .Flush());
    EXPECT_EQ(c.ReadOptionReply(nbd::kOptInfo), nbd::kRepErrTooBig);
    ASSERT_TRUE(c.U64(nbd::kOptionMagic).U32(nbd::kOptStartTls).U32(0).Flush());
    EXPECT_EQ(c.ReadOptionReply(nbd::kOptStartTls), nbd::kRepErrUnsup);
    ASSERT_TRUE(c.U64(nbd::kOptionMagic).U32(nbd::kOptList).U32(1).Bytes({0}).Flush());
    EXPECT_EQ(c.ReadOptionReply(nbd::kOptList), nbd::kRepErrInvalid);
    ASSERT_TRUE(c.U64(nbd::kOptionMagic).U32(nbd::kOptSetMetaContext).U32(0).Flush());
    EXPECT_EQ(c.ReadOptionReply(nbd::kOptSetMetaContext),
              nbd::kRepErrInvalid);  // no structured replies
    ASSERT_TRUE(c.U64(nbd::kOptionMagic).U32(nbd::kOptExportName).U32(0).Flush());
    EXPECT_EQ(c.ReadBig(8), kMiB);
    EXPECT_NE(c.ReadBig(2), UINT64_MAX);
    std::vector<uint8_t> zeroes;
    ASSERT_TRUE(c.Read(124, &zeroes));  // the client did not ask for NO_ZEROES
    EXPECT_EQ(zeroes, std::vector<uint8_t>(124, 0));
  }
  {
    RawClient c(harness.sock);  // bad option magic
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(c.U32(3).U64(0x1234).U32(nbd::kOptGo).U32(0).Flush());
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);  // unknown export via NBD_OPT_EXPORT_NAME
    ASSERT_TRUE(c.ReadGreeting());
    ASSERT_TRUE(
        c.U32(3).U64(nbd::kOptionMagic).U32(nbd::kOptExportName).U32(2).Bytes({'n', 'o'}).Flush());
    EXPECT_TRUE(c.ClosedByServer());
  }
  harness.ExpectHealthy();
}

TEST(NbdServerTest, SurvivesMalformedRequests) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Request(0, 42, 1, 0, 0).Flush());  // unknown command
    EXPECT_EQ(c.ReadSimpleReply(1), nbd::kEinval);
    ASSERT_TRUE(c.Request(nbd::kCmdFlagDf, nbd::kCmdRead, 2, 0, 512).Flush());  // flag not offered
    EXPECT_EQ(c.ReadSimpleReply(2), nbd::kEinval);
    ASSERT_TRUE(c.Request(0, nbd::kCmdRead, 3, kMiB - 1, 2).Flush());  // past the end
    EXPECT_EQ(c.ReadSimpleReply(3), nbd::kEinval);
    ASSERT_TRUE(c.Request(0, nbd::kCmdRead, 4, 0, (32 << 20) + 1).Flush());  // too long
    EXPECT_EQ(c.ReadSimpleReply(4), nbd::kEinval);
    // A rejected write's payload is skipped, not taken for requests.
    std::vector<uint8_t> payload(4096);
    for (size_t i = 0; i < payload.size(); i += 28) payload[i] = 0x25;
    ASSERT_TRUE(c.Request(0, nbd::kCmdWrite, 5, kMiB - 1024, 4096).Bytes(payload).Flush());
    EXPECT_EQ(c.ReadSimpleReply(5), nbd::kEnospc);
    ASSERT_TRUE(c.Request(0, nbd::kCmdBlockStatus, 6, 0, 4096).Flush());  // no context chosen
    EXPECT_EQ(c.ReadSimpleReply(6), nbd::kEinval);
    ASSERT_TRUE(c.Request(0, nbd::kCmdRead, 7, 512, 512).Flush());
    EXPECT_EQ(c.ReadSimpleReply(7), 0u);
    std::vector<uint8_t> data;
    ASSERT_TRUE(c.Read(512, &data));
    ASSERT_TRUE(c.Request(0, nbd::kCmdDisc, 8, 0, 0).Flush());
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.U32(0xdeadbeef).U16(0).U16(0).U64(1).U64(0).U32(512).Flush());  // bad magic
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Request(0, nbd::kCmdWrite, 1, 0, (33 << 20)).Flush());  // oversized write
    EXPECT_TRUE(c.ClosedByServer());
  }
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Request(0, nbd::kCmdWrite, 1, 0, 4096).Bytes(std::vector<uint8_t>(100)).Flush());
  }  // gone in the middle of a payload
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    // Garbage instead of a request header.  The server may close before the
    // client has sent it all, so the send itself may fail.
    (void)c.Bytes(RandomBytes(100000, 5)).Flush();
    EXPECT_TRUE(c.ClosedByServer());
  }
  harness.ExpectHealthy();
}

// Requests that arrive together reach the worker pool together: a worker
// woken for the first finds the rest queued (on one CPU it runs before
// the reader could hand it more), and their replies leave as a batch.
TEST(NbdServerTest, PipelinedRequestsReachThePoolInOneHandOff) {
  MemDevice dev(kMiB);
  NbdServerOptions opts;
  opts.threads = 1;
  Harness harness(&dev, opts);
  RawClient c(harness.sock);
  ASSERT_TRUE(c.EnterTransmission());
  constexpr int kCount = 8;
  for (int i = 0; i < kCount; i++) c.Request(0, nbd::kCmdRead, 100 + i, i * 4096, 4096);
  ASSERT_TRUE(c.Flush());  // one send: the reader's one recv() takes all
  for (int i = 0; i < kCount; i++) {
    ASSERT_EQ(c.ReadSimpleReply(100 + i), 0u) << "reply " << i;
    std::vector<uint8_t> data;
    ASSERT_TRUE(c.Read(4096, &data));
  }
  const NbdServerCounters counters = harness.server.Counters();
  EXPECT_EQ(counters.requests_total, uint64_t(kCount));
  EXPECT_EQ(counters.pool_handoffs, 1u);
}

// A worker that blocks in the device must not hold up the requests queued
// behind it: Submit wakes a worker for every job no worker has taken yet,
// so the rest still run.
// (Any policy that wakes fewer workers must keep this: one that woke only
// as many as there are CPUs hung a shutdown test.)
TEST(NbdServerTest, ARequestBlockedInTheDeviceDoesNotHoldUpTheOnesQueuedBehindIt) {
  GatedDevice dev(kMiB, UINT64_MAX, /*hold_reads=*/0);
  NbdServerOptions opts;
  opts.threads = 4;
  Harness harness(&dev, opts);
  OpenAtExit open_at_exit(&dev);
  RawClient c(harness.sock);
  ASSERT_TRUE(c.EnterTransmission());
  constexpr int kCount = 8;
  // The read of offset 0, held by the device, goes first: one hand-over
  // queues the other seven behind it.
  for (int i = 0; i < kCount; i++) c.Request(0, nbd::kCmdRead, 100 + i, i * 4096, 4096);
  ASSERT_TRUE(c.Flush());
  auto reply = [&c] {
    EXPECT_EQ(c.ReadBig(4), nbd::kSimpleReplyMagic);
    EXPECT_EQ(c.ReadBig(4), 0u);
    const uint64_t cookie = c.ReadBig(8);
    std::vector<uint8_t> data;
    EXPECT_TRUE(c.Read(4096, &data));
    return cookie;
  };
  std::vector<uint64_t> cookies;
  for (int i = 1; i < kCount; i++) {
    cookies.push_back(reply());
    ASSERT_NE(cookies.back(), UINT64_MAX) << "reply " << i << " never came";
  }
  std::sort(cookies.begin(), cookies.end());
  EXPECT_EQ(cookies, (std::vector<uint64_t>{101, 102, 103, 104, 105, 106, 107}));
  EXPECT_TRUE(dev.WaitHeld(1));
  dev.Open();
  EXPECT_EQ(reply(), 100u);
  EXPECT_EQ(harness.server.Counters().pool_handoffs, 1u);
}

// A client that sends one request at a time, each after the reply to the
// one before, is polled for: once 8 such requests came in a row, the reader
// finds the next one polling instead of asleep.  Requests pipelined behind
// each other end that, and polling is off with poll_us = 0.
TEST(NbdServerTest, AClientAtQueueDepthOneIsPolledFor) {
  for (const unsigned poll_us : {1000000u, 0u}) {
    SCOPED_TRACE("poll_us " + std::to_string(poll_us));
    MemDevice dev(kMiB);
    NbdServerOptions opts;
    opts.poll_us = poll_us;
    opts.threads = 1;  // the pipelined replies come in order
    Harness harness(&dev, opts);
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    uint64_t cookie = 100;
    // One request, after a pause long enough for the reader to find the
    // socket empty (it then polls, or sleeps).
    const auto lone_read = [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      c.Request(0, nbd::kCmdRead, cookie, 0, 4096);
      ASSERT_TRUE(c.Flush());
      ASSERT_EQ(c.ReadSimpleReply(cookie++), 0u);
      std::vector<uint8_t> data;
      ASSERT_TRUE(c.Read(4096, &data));
    };
    constexpr int kLone = 20;
    for (int i = 0; i < kLone; i++) lone_read();
    const uint64_t hits = harness.server.Counters().poll_hits;
    if (poll_us == 0) {
      EXPECT_EQ(hits, 0u);
      continue;
    }
    // The 9th and every later lone request (a reader held up for longer
    // than the pause finds a request without polling: a loaded machine).
    EXPECT_LE(hits, uint64_t{kLone - 8});
    EXPECT_GE(hits, uint64_t{kLone - 8 - 3});
    // Eight requests in one send, found by the reader's poll: the streak
    // ends, and the next lone request (the first of a new streak) is
    // waited for asleep.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    for (int i = 0; i < 8; i++) c.Request(0, nbd::kCmdRead, cookie + i, i * 4096, 4096);
    ASSERT_TRUE(c.Flush());
    for (int i = 0; i < 8; i++) {
      ASSERT_EQ(c.ReadSimpleReply(cookie + i), 0u);
      std::vector<uint8_t> data;
      ASSERT_TRUE(c.Read(4096, &data));
    }
    cookie += 8;
    lone_read();
    EXPECT_LE(harness.server.Counters().poll_hits, hits + 1);
  }
}

// A lone request that runs on a worker (a flush: only reads and writes run
// on the reader) and takes longer than the polling window does not use the
// window up: the reader polls while it runs, and the window starts at the
// reply, so the client's next request is found polling.  A request that
// takes longer than kPollWhileRunning windows sends the reader to sleep.
TEST(NbdServerTest, ALoneRequestOnAWorkerLeavesThePollingWindowToTheClient) {
  SlowWriteDevice dev(kMiB);
  NbdServerOptions opts;
  // 100 ms, so that a loaded machine still answers within the window; a
  // reader polls for up to 800 ms while a request runs.
  opts.poll_us = 100000;
  opts.threads = 1;
  Harness harness(&dev, opts);
  RawClient c(harness.sock);
  ASSERT_TRUE(c.EnterTransmission());
  uint64_t cookie = 1;
  // Each flush goes out as soon as the one before was answered, while the
  // worker that answered may still be letting go of it: the reader must
  // count that one as answered, or it finds two in flight and the streak
  // ends.
  const auto lone_flush = [&] {
    ASSERT_TRUE(c.Request(0, nbd::kCmdFlush, cookie, 0, 0).Flush());
    ASSERT_EQ(c.ReadSimpleReply(cookie++), 0u);
  };
  for (int i = 0; i < 10; i++) lone_flush();  // a streak: the reader polls from now on
  dev.flush_ms = 250;
  lone_flush();  // it may be found polling after the fast one before it
  const uint64_t before = harness.server.Counters().poll_hits;
  for (int i = 0; i < 3; i++) lone_flush();
  // Each of the 3 came after a 250 ms flush and was found polling (a
  // loaded machine may miss one).
  EXPECT_GE(harness.server.Counters().poll_hits, before + 2);
  dev.flush_ms = 1200;  // longer than 8 windows: the reader sleeps before the reply
  lone_flush();
  const uint64_t after_long = harness.server.Counters().poll_hits;
  dev.flush_ms = 0;
  lone_flush();
  EXPECT_EQ(harness.server.Counters().poll_hits, after_long);
}

// Requests held for one hand-over go to the pool before the reader waits
// for budget they hold: reads that together exceed the connection's bound,
// sent at once, all complete.
TEST(NbdServerTest, HeldRequestsAreHandedOverBeforeWaitingForBudget) {
  MemDevice dev(kMiB);
  NbdServerOptions opts;
  opts.threads = 1;
  opts.max_inflight_bytes = 64 << 10;  // three 16 KiB reads and their charges
  Harness harness(&dev, opts);
  RawClient c(harness.sock);
  ASSERT_TRUE(c.EnterTransmission());
  constexpr int kCount = 8;
  for (int i = 0; i < kCount; i++) c.Request(0, nbd::kCmdRead, 100 + i, i * 16384, 16384);
  ASSERT_TRUE(c.Flush());
  for (int i = 0; i < kCount; i++) {
    ASSERT_EQ(c.ReadSimpleReply(100 + i), 0u) << "reply " << i;
    std::vector<uint8_t> data;
    ASSERT_TRUE(c.Read(16384, &data));
  }
  EXPECT_GE(harness.server.Counters().pool_handoffs, 2u);
}

// A malformed request behind one the reader runs itself is read by the
// standby, and ends the connection once that request has been answered.
TEST(NbdServerTest, AMalformedRequestBehindALoneOneClosesAfterItsReply) {
  GatedDevice dev(kMiB);
  dev.gate_reads_at = 0;
  Harness harness(&dev);
  OpenAtExit open_at_exit(&dev);
  {
    RawClient c(harness.sock);
    ASSERT_TRUE(c.EnterTransmission());
    ASSERT_TRUE(c.Request(0, nbd::kCmdRead, 1, 0, 4096).Flush());
    ASSERT_TRUE(dev.WaitEntered(1));
    ASSERT_TRUE(c.U32(0xdeadbeef).U16(0).U16(0).U64(2).U64(0).U32(512).Flush());  // bad magic
    std::this_thread::sleep_for(50ms);  // for the standby to read it
    dev.Open();
    EXPECT_EQ(c.ReadSimpleReply(1), 0u);
    std::vector<uint8_t> data;
    ASSERT_TRUE(c.Read(4096, &data));
    EXPECT_TRUE(c.ClosedByServer());
  }
  harness.ExpectHealthy();
}

TEST(NbdServerTest, BoundsInflightDataPerConnection) {
  MemDevice dev(16 * kMiB);
  NbdServerOptions opts;
  opts.max_inflight_bytes = 1 * kMiB;
  Harness harness(&dev, opts);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  // Far more than the bound, all issued at once: the server reads them as
  // the budget frees up, and every one completes.
  constexpr int kCount = 64;
  std::vector<std::vector<uint8_t>> data(kCount);
  std::vector<Completion> done(kCount);
  for (int i = 0; i < kCount; i++) {
    data[i] = RandomBytes(256 * 1024, 50 + i);
    ASSERT_GE(nbd_aio_pwrite(h.get(), data[i].data(), data[i].size(), uint64_t(i) * 256 * 1024,
                             Callback(&done[i]), 0),
              1);
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == 0; }));
  for (int i = 0; i < kCount; i++) {
    EXPECT_EQ(done[i].error, 0);
    EXPECT_TRUE(
        std::equal(data[i].begin(), data[i].end(), dev.contents().begin() + i * 256 * 1024));
  }
}

// ---- shutdown ------------------------------------------------------------

TEST(NbdServerTest, ShutdownCompletesRequestsInFlight) {
  GatedDevice dev(kMiB);
  dev.gate_writes = true;
  NbdServerOptions opts;
  opts.threads = 8;
  Harness harness(&dev, opts);
  Nbd h = harness.Connect();
  ASSERT_NE(h, nullptr) << nbd_get_error();
  constexpr int kCount = 8;
  std::vector<std::vector<uint8_t>> data(kCount);
  std::vector<Completion> done(kCount);
  for (int i = 0; i < kCount; i++) {
    data[i] = RandomBytes(4096, 200 + i);
    ASSERT_GE(
        nbd_aio_pwrite(h.get(), data[i].data(), 4096, uint64_t(i) * 4096, Callback(&done[i]), 0),
        1);
  }
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == kCount; }));
  ASSERT_TRUE(dev.WaitEntered(kCount));
  EXPECT_EQ(harness.server.Counters().requests_in_flight, uint64_t(kCount));

  harness.server.Shutdown();
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(harness.run_returned.load());           // waiting for the device
  EXPECT_NE(::access(harness.sock.c_str(), F_OK), 0);  // but no longer accepting
  dev.Open();
  ASSERT_TRUE(PollUntil(h.get(), [&] { return nbd_aio_in_flight(h.get()) == 0; }));
  for (int i = 0; i < kCount; i++) {
    EXPECT_TRUE(done[i].done);
    EXPECT_EQ(done[i].error, 0);
    EXPECT_TRUE(std::equal(data[i].begin(), data[i].end(), dev.contents().begin() + i * 4096));
  }
  harness.Stop();
  EXPECT_TRUE(harness.run_returned.load());
}

TEST(NbdServerTest, ShutdownWithIdleAndHalfOpenClients) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  Nbd idle = harness.Connect();
  ASSERT_NE(idle, nullptr);
  RawClient silent(harness.sock);  // never finishes the handshake
  ASSERT_TRUE(silent.ReadGreeting());
  harness.Stop();
  EXPECT_TRUE(silent.ClosedByServer());
}

// ---- listeners -----------------------------------------------------------

TEST(NbdServerTest, ListensOnLoopbackTcp) {
  MemDevice dev(kMiB);
  for (const char* spec : {"tcp:0", "tcp::0", "tcp:127.0.0.1:0"}) {
    NbdServer server(&dev, {});
    ASSERT_TRUE(server.Listen(spec).ok()) << spec;
    const std::string addr = server.Addresses().at(0);
    ASSERT_TRUE(addr.starts_with("tcp:127.0.0.1:")) << addr;
    const std::string port = addr.substr(addr.rfind(':') + 1);
    EXPECT_NE(port, "0");
    std::thread runner([&] { EXPECT_TRUE(server.Run().ok()); });
    Nbd h(nbd_create());
    ASSERT_EQ(nbd_connect_tcp(h.get(), "127.0.0.1", port.c_str()), 0) << nbd_get_error();
    EXPECT_EQ(nbd_get_size(h.get()), int64_t(kMiB));
    h.reset();
    server.Shutdown();
    runner.join();
  }
}

TEST(NbdServerTest, RejectsBadListenSpecs) {
  MemDevice dev(kMiB);
  NbdServer server(&dev, {});
  for (const char* spec : {"", "foo", "unix:", "tcp:", "tcp:1.2.3.4:", "tcp:localhost:99999",
                           "tcp:[::1", "tcp:127.0.0.1:12ab"}) {
    const Status st = server.Listen(spec);
    EXPECT_FALSE(st.ok()) << spec;
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << spec << ": " << st.ToString();
  }
  EXPECT_FALSE(server.Run().ok());  // nothing to listen on
}

TEST(NbdServerTest, UnixSocketIsPrivateAndReplacedOnlyWhenStale) {
  MemDevice dev(kMiB);
  Harness harness(&dev);
  struct stat st;
  ASSERT_EQ(::stat(harness.sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A live socket is not taken over.
  std::unique_ptr<ListenSocket> ls;
  Status s = ListenSocket::Open("unix:" + harness.sock, &ls);
  EXPECT_EQ(s.code(), Status::Code::kBusy) << s.ToString();
  harness.ExpectHealthy();

  // A stale one is.
  const std::string stale = harness.dir.path() + "/stale.sock";
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, stale.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  s = ListenSocket::Open("unix:" + stale, &ls);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ls->address(), "unix:" + stale);
  ls.reset();
  EXPECT_NE(::access(stale.c_str(), F_OK), 0);  // removed on close

  // Anything else is left alone.
  const std::string file = harness.dir.path() + "/file";
  std::ofstream(file) << "keep me";
  s = ListenSocket::Open("unix:" + file, &ls);
  EXPECT_FALSE(s.ok());
  std::ifstream in(file);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "keep me");
}

}  // namespace
}  // namespace insitu
